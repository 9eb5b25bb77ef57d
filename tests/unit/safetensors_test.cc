#include <gtest/gtest.h>

#include <cstring>

#include "modelcast/model/safetensors.h"
#include "support/temp_dir.h"

namespace modelcast::model {
namespace {
namespace fs = std::filesystem;

std::string Le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A safetensors file from a literal header and `data_bytes` bytes of data.
std::string MakeFile(const std::string& header, size_t data_bytes) {
  return Le64(header.size()) + header + std::string(data_bytes, '\x01');
}

class SafetensorsTest : public ::testing::Test {
 protected:
  // Writes `contents` to a file and opens it, expecting failure; returns the message.
  std::string OpenError(const std::string& contents) {
    const fs::path p = dir_ / "model.safetensors";
    testing::WriteAll(p, contents);
    auto f = SafetensorsFile::Open(p);
    EXPECT_FALSE(f.ok()) << "opened a malformed file";
    if (f.ok()) return "";
    EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument) << f.status().ToString();
    EXPECT_NE(f.status().message().find(p.string()), std::string::npos)
        << "error does not name the file: " << f.status().message();
    return f.status().message();
  }
  testing::TempDir dir_;
};

constexpr const char* kGood =
    R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
    R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}})";

TEST_F(SafetensorsTest, ReadsAValidFile) {
  testing::WriteAll(dir_ / "ok.safetensors", MakeFile(kGood, 32));
  auto f = SafetensorsFile::Open(dir_ / "ok.safetensors");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->header().tensors.size(), 2u);
  const auto* a = f->header().Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f->header().metadata.at("format"), "pt");
  uint8_t buf[8];
  ASSERT_TRUE(f->Read(*f->header().Find("b"), 0, buf).ok());
  EXPECT_EQ(buf[0], 1);
  EXPECT_EQ(f->Read(*a, 20, buf).code(), StatusCode::kOutOfRange);
}

TEST_F(SafetensorsTest, WriterOutputReadsBack) {
  std::vector<SafetensorsWriteSpec> specs = {
      {"x", DType::kF16, {3, 5}}, {"y", DType::kI32, {7}}, {"z", DType::kU8, {0}}};
  auto fill = [](const SafetensorsWriteSpec& s, std::span<uint8_t> dst) {
    for (size_t i = 0; i < dst.size(); ++i) dst[i] = static_cast<uint8_t>(i + s.name[0]);
    return Status::Ok();
  };
  ASSERT_TRUE(WriteSafetensors(dir_ / "w.safetensors", specs, {{"k", "v"}}, fill).ok());
  auto f = SafetensorsFile::Open(dir_ / "w.safetensors");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->header().data_offset % 8, 0u);
  const auto* y = f->header().Find("y");
  ASSERT_NE(y, nullptr);
  EXPECT_EQ(y->nbytes(), 28u);
  std::vector<uint8_t> buf(28);
  ASSERT_TRUE(f->Read(*y, 0, buf).ok());
  EXPECT_EQ(buf[3], static_cast<uint8_t>(3 + 'y'));
  EXPECT_EQ(f->header().Find("z")->nbytes(), 0u);
}

TEST_F(SafetensorsTest, FileShorterThanLengthPrefix) {
  EXPECT_NE(OpenError("abc").find("shorter than the 8-byte header length"), std::string::npos);
  EXPECT_NE(OpenError("").find("0 bytes"), std::string::npos);
}

TEST_F(SafetensorsTest, HeaderLongerThanFile) {
  std::string f = Le64(1000) + "{}";
  EXPECT_NE(OpenError(f).find("header length 1000 runs past the end"), std::string::npos);
}

TEST_F(SafetensorsTest, HeaderOverTheSizeLimit) {
  auto r = ParseSafetensorsHeaderLength(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(Le64(200'000'000).data()), 8), 300'000'000,
      "big.safetensors");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("exceeds the 100 MB limit"), std::string::npos);
}

TEST_F(SafetensorsTest, TruncatedData) {
  // The header promises 32 data bytes; the file has 20.
  EXPECT_NE(OpenError(MakeFile(kGood, 20)).find("past the end of the file"), std::string::npos);
}

TEST_F(SafetensorsTest, InvalidJson) {
  EXPECT_NE(OpenError(MakeFile(R"({"a": {"dtype": "F32",)", 0)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(OpenError(MakeFile(R"([1, 2])", 0)).find("does not start with '{'"), std::string::npos);
}

TEST_F(SafetensorsTest, UnknownDtype) {
  const std::string h = R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})";
  std::string m = OpenError(MakeFile(h, 16));
  EXPECT_NE(m.find("tensor 'a'"), std::string::npos);
  EXPECT_NE(m.find("unknown dtype 'F128'"), std::string::npos);
}

TEST_F(SafetensorsTest, ShapeDoesNotMatchByteLength) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})";
  EXPECT_NE(OpenError(MakeFile(h, 20)).find("is 24 bytes but data_offsets span 20"), std::string::npos);
}

TEST_F(SafetensorsTest, ShapeOverflow) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})";
  EXPECT_NE(OpenError(MakeFile(h, 4)).find("overflows"), std::string::npos);
  const std::string neg = R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})";
  EXPECT_NE(OpenError(MakeFile(neg, 4)).find("not a non-negative integer"), std::string::npos);
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  const std::string h = R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})";
  std::string m = OpenError(MakeFile(h, 12));
  EXPECT_NE(m.find("overlaps"), std::string::npos);
  EXPECT_NE(m.find("'a'"), std::string::npos);
  EXPECT_NE(m.find("'b'"), std::string::npos);
}

TEST_F(SafetensorsTest, GapsAndTrailingBytes) {
  const std::string gap = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})";
  EXPECT_NE(OpenError(MakeFile(gap, 12)).find("gap of 4 bytes before tensor 'b'"), std::string::npos);
  const std::string trailing = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  EXPECT_NE(OpenError(MakeFile(trailing, 10)).find("6 bytes after the last tensor"), std::string::npos);
}

TEST_F(SafetensorsTest, MalformedEntries) {
  auto err = [&](const std::string& entry) { return OpenError(MakeFile("{\"a\":" + entry + "}", 4)); };
  EXPECT_NE(err(R"({"shape":[4],"data_offsets":[0,4]})").find("missing or non-string dtype"), std::string::npos);
  EXPECT_NE(err(R"({"dtype":"U8","data_offsets":[0,4]})").find("missing or non-array shape"), std::string::npos);
  EXPECT_NE(err(R"({"dtype":"U8","shape":[4],"data_offsets":[0]})").find("data_offsets must be"), std::string::npos);
  EXPECT_NE(err(R"({"dtype":"U8","shape":[4],"data_offsets":[4,0]})").find("before begin"), std::string::npos);
  EXPECT_NE(err(R"({"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":1})").find("unknown field 'x'"),
            std::string::npos);
  EXPECT_NE(err(R"(7)").find("entry is not an object"), std::string::npos);
  EXPECT_NE(OpenError(MakeFile(R"({"__metadata__":{"k":1}})", 0)).find("is not a string"), std::string::npos);
}

TEST_F(SafetensorsTest, DuplicateTensorNames) {
  const std::string h = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                        R"("a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  EXPECT_NE(OpenError(MakeFile(h, 8)).find("tensor 'a' appears twice"), std::string::npos);
}

}  // namespace
}  // namespace modelcast::model

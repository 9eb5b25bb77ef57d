// The coordinator's etcd client against real etcd members (Debian's etcd-server, on loopback):
// reads, writes and transactions, leases that keep keys alive and expire, a watch, one member of
// three killed without the client noticing, and endpoint lists that are wrong.
#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <thread>

#include "etcd_client.h"
#include "cluster_state.h"
#include "election.h"
#include "etcd_log.h"
#include "modelcast/common/config.h"
#include "modelcast/common/file_util.h"
#include "support/pipeline_models.h"
#include "support/etcd_members.h"
#include "support/ports.h"
#include "support/store_fixture.h"
#include "Coordinator.h"
#include "modelcast/rpc/server.h"
#include <thrift/protocol/TMultiplexedProtocol.h>
#include "support/process.h"
#include "support/temp_dir.h"

namespace modelcast::coordinator {
namespace {

using namespace std::chrono_literals;

using testing::EtcdBinary;

// Three etcd members on loopback, each with a data dir of its own.
class EtcdClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (EtcdBinary() == nullptr) GTEST_SKIP() << "no etcd binary (scripts/dev.sh installs etcd-server)";
    ASSERT_TRUE(etcd_.Start(dir_.path()).ok());
    auto c = EtcdClient::Create(Endpoints(), 5);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    client_ = std::move(*c);
  }
  static std::string Name(int i) { return testing::EtcdMembers::Name(i); }
  std::vector<std::string> Endpoints() const { return etcd_.Endpoints(); }
  void Start(int i, const std::string& state) { etcd_.StartMember(i, state); }
  void KillMember(int i) { etcd_.Kill(i); }

  testing::TempDir dir_;
  testing::EtcdMembers etcd_;
  std::unique_ptr<EtcdClient> client_;
};

TEST(Base64Test, RoundTripsEveryByteAndRefusesWhatIsNotBase64) {
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  for (size_t n = 0; n < 7; ++n) {
    auto back = Base64Decode(Base64Encode(all.substr(0, n)));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, all.substr(0, n));
  }
  EXPECT_EQ(Base64Encode("foo"), "Zm9v");  // etcd's own example
  EXPECT_EQ(*Base64Decode(Base64Encode(all)), all);
  EXPECT_FALSE(Base64Decode("Zm9v!").ok());
  EXPECT_EQ(EtcdClient::PrefixEnd("/mc/"), "/mc0");
}

TEST(EtcdEndpointsTest, WrongListsAreRefusedNamingTheEndpoint) {
  EXPECT_FALSE(EtcdClient::Create({}).ok());
  for (const std::string bad : {"localhost", "127.0.0.1:", ":2379", "127.0.0.1:port", "127.0.0.1:70000"}) {
    auto c = EtcdClient::Create({"127.0.0.1:2379", bad});
    ASSERT_FALSE(c.ok()) << bad;
    EXPECT_NE(c.status().message().find("'" + bad + "'"), std::string::npos) << c.status().ToString();
  }
  // Well-formed but nobody there: each call says which members it tried.
  const int nobody = testing::FreePort();
  auto c = EtcdClient::Create({"127.0.0.1:" + std::to_string(nobody)}, 1);
  ASSERT_TRUE(c.ok());
  auto v = (*c)->Version();
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(v.status().message().find(std::to_string(nobody)), std::string::npos) << v.status().ToString();
}

TEST_F(EtcdClientTest, ReadsWritesAndCompareAndSwap) {
  auto rev = client_->Put("/mc/a", std::string("x\0y", 3));
  ASSERT_TRUE(rev.ok()) << rev.status().ToString();
  ASSERT_TRUE(client_->Put("/mc/b", "2").ok());
  ASSERT_TRUE(client_->Put("/other", "3").ok());
  int64_t header = 0;
  auto kvs = client_->Range("/mc/", EtcdClient::PrefixEnd("/mc/"), &header);
  ASSERT_TRUE(kvs.ok()) << kvs.status().ToString();
  ASSERT_EQ(kvs->size(), 2u);
  EXPECT_EQ((*kvs)[0].key, "/mc/a");
  EXPECT_EQ((*kvs)[0].value, std::string("x\0y", 3)) << "binary values survive";
  EXPECT_EQ((*kvs)[0].create_revision, *rev);
  EXPECT_GT(header, *rev);
  // Create only if absent: the first wins, the second is told no and reads what is there.
  const EtcdCompare absent{"/mc/leader", EtcdCompare::Target::kCreate, EtcdCompare::Op::kEqual, 0, ""};
  auto first = client_->Txn({absent}, {EtcdOp::Put("/mc/leader", "c1")}, {EtcdOp::Get("/mc/leader")});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_TRUE(first->succeeded);
  auto second = client_->Txn({absent}, {EtcdOp::Put("/mc/leader", "c2")}, {EtcdOp::Get("/mc/leader")});
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->succeeded);
  ASSERT_EQ(second->reads.size(), 1u);
  ASSERT_EQ(second->reads[0].size(), 1u);
  EXPECT_EQ(second->reads[0][0].value, "c1");
  // A write fenced on a revision that has moved on is refused.
  const EtcdCompare stale{"/mc/b", EtcdCompare::Target::kMod, EtcdCompare::Op::kEqual, *rev, ""};
  auto fenced = client_->Txn({stale}, {EtcdOp::Put("/mc/b", "late")});
  ASSERT_TRUE(fenced.ok());
  EXPECT_FALSE(fenced->succeeded);
  EXPECT_EQ((*client_->Range("/mc/b"))[0].value, "2");
  EXPECT_EQ(*client_->Delete("/mc/", EtcdClient::PrefixEnd("/mc/")), 3);
  EXPECT_TRUE(client_->Range("/mc/", EtcdClient::PrefixEnd("/mc/"))->empty());
}

TEST_F(EtcdClientTest, ALeaseKeepsItsKeyWhileKeptAliveAndDeletesItWhenItExpires) {
  auto lease = client_->LeaseGrant(2);
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  ASSERT_TRUE(client_->Put("/mc/alive", "1", *lease).ok());
  for (int i = 0; i < 6; ++i) {
    std::this_thread::sleep_for(500ms);
    auto ttl = client_->LeaseKeepAlive(*lease);
    ASSERT_TRUE(ttl.ok()) << ttl.status().ToString();
  }
  EXPECT_EQ(client_->Range("/mc/alive")->size(), 1u) << "kept alive past its TTL";
  const auto by = std::chrono::steady_clock::now() + 10s;
  while (!client_->Range("/mc/alive")->empty() && std::chrono::steady_clock::now() < by) {
    std::this_thread::sleep_for(100ms);  // a poll with a deadline: the lease expires in ~2 s
  }
  EXPECT_TRUE(client_->Range("/mc/alive")->empty()) << "its key went with the lease";
  EXPECT_EQ(client_->LeaseKeepAlive(*lease).status().code(), StatusCode::kNotFound);
  auto other = client_->LeaseGrant(60);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(client_->Put("/mc/revoked", "1", *other).ok());
  EXPECT_TRUE(client_->LeaseRevoke(*other).ok());
  EXPECT_TRUE(client_->Range("/mc/revoked")->empty());
}

TEST_F(EtcdClientTest, AWatchSeesPutsAndDeletesInOrder) {
  std::mutex mu;
  std::vector<std::pair<bool, std::string>> seen;
  // From the revision after now: every write below is seen, however soon the watch is set up.
  int64_t now = 0;
  ASSERT_TRUE(client_->Range("/mc/", EtcdClient::PrefixEnd("/mc/"), &now).ok());
  auto w = client_->Watch(
      "/mc/", EtcdClient::PrefixEnd("/mc/"), now + 1,
      [&](const EtcdEvent& e) {
        std::lock_guard<std::mutex> lock(mu);
        seen.push_back({e.deleted, e.kv.key + "=" + e.kv.value});
      },
      nullptr);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(client_->Put("/mc/x", "1").ok());
  ASSERT_TRUE(client_->Put("/elsewhere", "1").ok());
  ASSERT_TRUE(client_->Put("/mc/x", "2").ok());
  ASSERT_TRUE(client_->Delete("/mc/x").ok());
  const auto by = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < by) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (seen.size() >= 3) break;
    }
    std::this_thread::sleep_for(20ms);
  }
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], std::make_pair(false, std::string("/mc/x=1")));
  EXPECT_EQ(seen[1], std::make_pair(false, std::string("/mc/x=2")));
  EXPECT_TRUE(seen[2].first);
  w->reset();  // stops at once though no event is coming
}

// The leader itself killed: the others elect a new one while the client keeps writing.
TEST_F(EtcdClientTest, OneMemberOfThreeKilledChangesNothing) {
  ASSERT_TRUE(client_->Put("/mc/k", "before").ok());
  int leader = -1;
  for (int i = 0; i < 3 && leader < 0; ++i) {
    auto one = EtcdClient::Create({Endpoints()[i]}, 5);
    ASSERT_TRUE(one.ok());
    auto st = (*one)->Member();
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    if (st->member_id == st->leader) leader = i;
  }
  ASSERT_GE(leader, 0) << "no member says it leads";
  KillMember(leader);
  for (int i = 0; i < 20; ++i) {
    auto rev = client_->Put("/mc/k", std::to_string(i));
    ASSERT_TRUE(rev.ok()) << "put " << i << ": " << rev.status().ToString();
  }
  EXPECT_EQ((*client_->Range("/mc/k"))[0].value, "19");
  Start(leader, "existing");  // back with its data dir: it catches up
  auto alone = EtcdClient::Create({Endpoints()[leader]}, 5);
  ASSERT_TRUE(alone.ok());
  const auto by = std::chrono::steady_clock::now() + 30s;
  Result<std::vector<EtcdKv>> got = Unavailable("not asked");
  while (std::chrono::steady_clock::now() < by) {
    got = (*alone)->Range("/mc/k");
    if (got.ok() && !got->empty() && (*got)[0].value == "19") break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ((*got)[0].value, "19");
}

// The coordinator's state as a record log in etcd: what is appended is replayed by whoever opens
// the prefix next (a standby), in order, across a compaction; records larger than an etcd request
// are cut into parts; a record cut short is not replayed; a deposed leader's writes are refused
// (fencing); a prefix that is not ours, or a newer format, is refused and left as it is.
TEST_F(EtcdClientTest, TheStateLogReplaysInOrderAndRefusesADeposedLeader) {
  std::shared_ptr<EtcdClient> shared = std::move(client_);
  auto open = [&](std::vector<nlohmann::json>* seen, JournalOpenReport* report = nullptr) {
    return EtcdLog::Open(
        shared, "/mc/state", [seen](const nlohmann::json& r) { seen->push_back(r); return Status::Ok(); }, report,
        4096);
  };
  std::vector<nlohmann::json> none;
  // Read (a standby's serving plane) writes nothing, not even the format marker.
  ASSERT_TRUE(EtcdLog::Read(shared, "/mc/state", [&](const nlohmann::json& r) {
                none.push_back(r);
                return Status::Ok();
              }).ok());
  EXPECT_TRUE(none.empty());
  EXPECT_TRUE(shared->Range("/mc/state/", EtcdClient::PrefixEnd("/mc/state/"))->empty());
  auto log = open(&none);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  EXPECT_TRUE(none.empty());
  // Elected: the leader key made with a lease, the log fenced on it.
  auto lease = shared->LeaseGrant(30);
  ASSERT_TRUE(lease.ok());
  auto elected = shared->Txn({{"/mc/leader", EtcdCompare::Target::kCreate, EtcdCompare::Op::kEqual, 0, ""}},
                             {EtcdOp::Put("/mc/leader", "c1", *lease)});
  ASSERT_TRUE(elected.ok() && elected->succeeded);
  (*log)->Fence("/mc/leader", elected->revision);
  const std::string big(20000, 'm');  // five parts of 4 KiB
  std::vector<nlohmann::json> want;
  for (int i = 0; i < 5; ++i) want.push_back({{"op", "n"}, {"i", i}});
  want.push_back({{"op", "big"}, {"manifest", big}});
  for (const auto& r : want) ASSERT_TRUE((*log)->Append(r).ok());
  std::vector<nlohmann::json> seen;
  JournalOpenReport report;
  ASSERT_TRUE(open(&seen, &report).ok());
  EXPECT_EQ(seen, want);
  // Compacted to two records, then one more: a standby sees exactly those three.
  ASSERT_TRUE((*log)->Compact({want[0], want[5]}).ok());
  ASSERT_TRUE((*log)->Append({{"op", "after"}}).ok());
  seen.clear();
  ASSERT_TRUE(open(&seen).ok());
  EXPECT_EQ(seen, (std::vector<nlohmann::json>{want[0], want[5], {{"op", "after"}}}));
  // Read replays the same; the serving routes beside the log are not foreign keys.
  ASSERT_TRUE(shared->Put("/mc/state/routes/m@n1", "{}").ok());
  std::vector<nlohmann::json> read;
  ASSERT_TRUE(EtcdLog::Read(shared, "/mc/state", [&](const nlohmann::json& r) {
                read.push_back(r);
                return Status::Ok();
              }).ok());
  EXPECT_EQ(read, seen);
  // A record whose end never got written (its writer died) is not replayed.
  auto gen = shared->Range("/mc/state/gen");
  ASSERT_TRUE(gen.ok() && gen->size() == 1);
  char torn[128];
  std::snprintf(torn, sizeof torn, "/mc/state/g/%012d/log/%012d/000000", std::stoi((*gen)[0].value), 1);
  ASSERT_TRUE(shared->Put(torn, "{\"op\": \"half").ok());
  seen.clear();
  ASSERT_TRUE(open(&seen, &report).ok());
  EXPECT_EQ(seen.size(), 3u);
  EXPECT_EQ(report.torn_bytes, 1u);
  // Deposed: the lease revoked (the leader key goes), another coordinator elected; the old
  // leader's append and compaction are refused and change nothing.
  ASSERT_TRUE(shared->LeaseRevoke(*lease).ok());
  ASSERT_TRUE(shared->Txn({{"/mc/leader", EtcdCompare::Target::kCreate, EtcdCompare::Op::kEqual, 0, ""}},
                          {EtcdOp::Put("/mc/leader", "c2")})->succeeded);
  Status late = (*log)->Append({{"op", "late"}});
  EXPECT_EQ(late.code(), StatusCode::kFailedPrecondition) << late.ToString();
  EXPECT_NE(late.message().find("no longer leads"), std::string::npos) << late.ToString();
  EXPECT_EQ((*log)->Compact({}).code(), StatusCode::kFailedPrecondition);
  seen.clear();
  ASSERT_TRUE(open(&seen).ok());
  EXPECT_EQ(seen.size(), 3u) << "the deposed leader changed nothing";
  // Not ours: keys of another program, another format marker, a newer version.
  ASSERT_TRUE(shared->Put("/app/config", "x").ok());
  auto foreign = EtcdLog::Open(shared, "/app", [](const nlohmann::json&) { return Status::Ok(); });
  ASSERT_FALSE(foreign.ok());
  EXPECT_NE(foreign.status().message().find("not a modelcast coordinator's state"), std::string::npos)
      << foreign.status().ToString();
  Status foreign_read = EtcdLog::Read(shared, "/app", [](const nlohmann::json&) { return Status::Ok(); });
  EXPECT_EQ(foreign_read.code(), StatusCode::kFailedPrecondition) << foreign_read.ToString();
  ASSERT_TRUE(shared->Put("/newer/format", R"({"format": "modelcast-coordinator-state", "version": 9})").ok());
  auto newer = EtcdLog::Open(shared, "/newer", [](const nlohmann::json&) { return Status::Ok(); });
  ASSERT_FALSE(newer.ok());
  EXPECT_NE(newer.status().message().find("newer modelcast"), std::string::npos) << newer.status().ToString();
  EXPECT_EQ((*shared->Range("/app/config"))[0].value, "x") << "left as it was";
  EXPECT_FALSE(EtcdLog::Open(shared, "/trailing/", [](const nlohmann::json&) { return Status::Ok(); }).ok());
}

// `coordinator.state: {etcd: ...}`: the coordinator's state in etcd. One coordinator registers a
// model; another, with a state_dir of its own, opens the same prefix and finds it, in the next
// epoch. Wrong configs are named at parse time, an etcd nobody answers at start.
TEST_F(EtcdClientTest, ACoordinatorsStateInEtcdIsFoundByTheNextOne) {
  auto parse = [](const std::string& state) {
    const std::string text = "address: 127.0.0.1\nstate_dir: /tmp/x\nsecurity: {insecure: true}\n" + state;
    auto node = ConfigNode::ParseString(text, "c.yaml");
    EXPECT_TRUE(node.ok()) << node.status().ToString();
    return CoordinatorConfig::FromConfig(*node);
  };
  std::string eps;
  for (const auto& e : Endpoints()) eps += (eps.empty() ? "" : ", ") + e;
  auto config = parse("state: {etcd: {endpoints: [" + eps + "], prefix: /mc/box, timeout: 3s}}\n");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->etcd_endpoints, Endpoints());
  EXPECT_EQ(config->etcd_prefix, "/mc/box");
  EXPECT_NE(parse("state: {etcd: {endpoints: [127.0.0.1], prefix: /mc}}\n").status().message().find(
                "c.yaml:4: state.etcd.endpoints: etcd: endpoint '127.0.0.1' is not host:port"),
            std::string::npos);
  EXPECT_NE(parse("state: {etcd: {endpoints: [], prefix: /mc}}\n").status().message().find("at least one"),
            std::string::npos);
  EXPECT_NE(parse("state: {etcd: {endpoints: [" + eps + "], prefix: mc/}}\n").status().message().find("prefix"),
            std::string::npos);
  EXPECT_NE(parse("state: {zookeeper: {}}\n").status().message().find("zookeeper"), std::string::npos);

  auto model = testing::PrepareModel(testing::Tiny(DType::kBF16, 3), 2);
  auto manifest_text = ReadFileToString(model->package->dir() / "manifest.json");
  ASSERT_TRUE(manifest_text.ok()) << manifest_text.status().ToString();
  const std::string manifest = *manifest_text;
  planner::ClusterConfig cluster;
  cluster.name = "box";
  int64_t first_epoch = 0;
  // Bytes that are not UTF-8 too: the files are carried as base64.
  const std::map<std::string, std::string> tokenizer = {
      {"tokenizer.json", "{\"model\": {\"type\": \"BPE\"}, \"bytes\": \"\xff\xfe\"}"},
      {"tokenizer_config.json", "{\"bos_token\": \"<s>\"}"}};
  {
    config->state_dir = dir_ / "c1";
    auto c1 = ClusterState::Open(cluster, *config);
    ASSERT_TRUE(c1.ok()) << c1.status().ToString();
    first_epoch = (*c1)->epoch();
    auto reg = (*c1)->RegisterModel(model->package->manifest().name, manifest, 120);
    ASSERT_TRUE(reg.ok()) << reg.status().ToString();
    // A model with a tokenizer: its text files travel in the record, not in c1's state_dir.
    ASSERT_NO_FATAL_FAILURE(testing::MakePackage(dir_.path(), dir_ / "tok", "tok-llm", 0, 2, 64 << 10, tokenizer));
    auto pkg = model::Package::Open(dir_ / "tok");
    ASSERT_TRUE(pkg.ok()) << pkg.status().ToString();
    auto files = pkg->ReadTextFiles();
    ASSERT_TRUE(files.ok()) << files.status().ToString();
    ASSERT_EQ(files->size(), tokenizer.size());
    auto tok_manifest = ReadFileToString(dir_ / "tok" / "manifest.json");
    ASSERT_TRUE(tok_manifest.ok());
    reg = (*c1)->RegisterModel("tok-llm", *tok_manifest, 60, *files);
    ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  }
  config->state_dir = dir_ / "c2";
  auto c2 = ClusterState::Open(cluster, *config);
  ASSERT_TRUE(c2.ok()) << c2.status().ToString();
  EXPECT_EQ((*c2)->epoch(), first_epoch + 1);
  const auto models = (*c2)->ListModels();
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0].name, model->package->manifest().name);
  EXPECT_DOUBLE_EQ(models[0].keep_alive, 120);
  auto found = (*c2)->FindTextFiles("tok-llm");
  ASSERT_NE(found, nullptr) << "the next coordinator has the tokenizer";
  EXPECT_EQ(*found, (ClusterState::TextFiles(tokenizer.begin(), tokenizer.end())));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "c1" / "models" / "tok-llm")) << "nothing of it in the first one's state_dir";
  // Nobody at the endpoints: an error at start that names them.
  const int nobody = testing::FreePort();
  config->etcd_endpoints = {"127.0.0.1:" + std::to_string(nobody)};
  config->etcd_timeout = 1;
  config->state_dir = dir_ / "c3";
  auto none = ClusterState::Open(cluster, *config);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(none.status().message().find(std::to_string(nobody)), std::string::npos) << none.status().ToString();
}

// Leader election on a lease: one of two candidates leads; when it resigns the other leads at
// once; when the leader is cut off from etcd (the only member it talks to killed) it stops
// leading within the TTL, the other takes over, and the old leader's late write is refused.
TEST_F(EtcdClientTest, OneCandidateLeadsAndACutOffLeaderIsFencedOut) {
  struct Seen {
    std::mutex mu;
    std::vector<std::pair<bool, int64_t>> changes;
  };
  auto candidate = [&](std::shared_ptr<EtcdClient> c, const std::string& name, Seen* seen) {
    LeaderElection::Options o;
    o.key = "/mc/leader";
    o.value = name;
    o.ttl_s = 2;
    o.on_change = [seen](bool led, int64_t rev) {
      std::lock_guard<std::mutex> lock(seen->mu);
      seen->changes.push_back({led, rev});
    };
    auto e = LeaderElection::Start(std::move(c), o);
    EXPECT_TRUE(e.ok());
    return std::move(*e);
  };
  auto wait_for = [](const std::function<bool()>& f, std::chrono::milliseconds within) {
    const auto by = std::chrono::steady_clock::now() + within;
    while (!f() && std::chrono::steady_clock::now() < by) std::this_thread::sleep_for(20ms);
    return f();
  };
  std::shared_ptr<EtcdClient> shared = std::move(client_);
  Seen sa, sb;
  auto a = candidate(shared, "a", &sa);
  ASSERT_TRUE(wait_for([&] { return a->leading(); }, 5s));
  auto b = candidate(shared, "b", &sb);
  std::this_thread::sleep_for(1500ms);
  EXPECT_FALSE(b->leading()) << "one leader at a time";
  EXPECT_EQ(*b->Leader(), "a");
  EXPECT_EQ((*shared->Range("/mc/leader"))[0].create_revision, a->fence_revision());
  // a resigns: b leads within a third of the TTL and a bit.
  const auto t0 = std::chrono::steady_clock::now();
  a.reset();
  ASSERT_TRUE(wait_for([&] { return b->leading(); }, 3s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  {
    std::lock_guard<std::mutex> lock(sa.mu);
    ASSERT_EQ(sa.changes.size(), 2u);
    EXPECT_TRUE(sa.changes[0].first);
    EXPECT_FALSE(sa.changes[1].first);
  }
  // b's only member killed: b stops leading within the TTL; c (on the other members) leads.
  int b_member = -1;
  for (int i = 0; i < 3; ++i) {
    auto one = EtcdClient::Create({Endpoints()[i]}, 1);
    ASSERT_TRUE(one.ok());
    auto m = (*one)->Member();
    if (m.ok() && m->member_id != m->leader) b_member = i;  // not the raft leader: the others keep a quorum
  }
  ASSERT_GE(b_member, 0);
  b.reset();
  Seen sb2, sc;
  auto b_alone = EtcdClient::Create({Endpoints()[b_member]}, 1);
  ASSERT_TRUE(b_alone.ok());
  std::shared_ptr<EtcdClient> b_client = std::move(*b_alone);
  auto b2 = candidate(b_client, "b", &sb2);
  ASSERT_TRUE(wait_for([&] { return b2->leading(); }, 5s));
  std::vector<std::string> others;
  for (int i = 0; i < 3; ++i) {
    if (i != b_member) others.push_back(Endpoints()[i]);
  }
  auto c_client = EtcdClient::Create(others, 2);
  ASSERT_TRUE(c_client.ok());
  std::shared_ptr<EtcdClient> cc = std::move(*c_client);
  auto c = candidate(cc, "c", &sc);
  // b's state log, fenced on its election.
  std::vector<nlohmann::json> ignored;
  auto b_log = EtcdLog::Open(b_client, "/mc/fenced", [&](const nlohmann::json& r) { ignored.push_back(r); return Status::Ok(); });
  ASSERT_TRUE(b_log.ok()) << b_log.status().ToString();
  (*b_log)->Fence("/mc/leader", b2->fence_revision());
  ASSERT_TRUE((*b_log)->Append({{"op", "while-leading"}}).ok());
  const auto cut = std::chrono::steady_clock::now();
  KillMember(b_member);
  ASSERT_TRUE(wait_for([&] { return !b2->leading(); }, 4s)) << "a cut-off leader stops within the TTL";
  EXPECT_LT(std::chrono::steady_clock::now() - cut, 2500ms);
  ASSERT_TRUE(wait_for([&] { return c->leading(); }, 6s));
  // b's member comes back: b's late write, fenced on its old election, is refused.
  Start(b_member, "existing");
  Status late = Unavailable("not tried");
  ASSERT_TRUE(wait_for([&] {
    late = (*b_log)->Append({{"op", "late"}});
    // (while its member catches up it may answer that it cannot yet)
    return late.code() != StatusCode::kUnavailable && late.code() != StatusCode::kDeadlineExceeded;
  }, 30s)) << late.ToString();
  EXPECT_EQ(late.code(), StatusCode::kFailedPrecondition) << late.ToString();
  std::vector<nlohmann::json> seen;
  ASSERT_TRUE(EtcdLog::Open(cc, "/mc/fenced", [&](const nlohmann::json& r) { seen.push_back(r); return Status::Ok(); }).ok());
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0]["op"], "while-leading");
}

// Coordinator processes sharing their state in etcd: the first leads (it listens), the second
// stands by (it does not); the leader SIGKILLed, the standby leads within the lease and has the
// leader's models; a standby asked to stop while it waits stops at once, cleanly.
TEST_F(EtcdClientTest, AStandbyCoordinatorLeadsWhenTheLeaderIsKilled) {
  std::string eps;
  for (const auto& e : Endpoints()) eps += (eps.empty() ? "" : ", ") + e;
  auto config = [&](const std::string& name, int port) {
    const auto path = dir_ / (name + ".yaml");
    testing::WriteAll(path, "name: box\n"
                            "defaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: 8GiB, "
                            "nic: 16Gbit, pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\n"
                            "nodes:\n  - {name: node-1, address: 127.0.0.1, port: 7401}\n"
                            "coordinator:\n  address: 127.0.0.1\n  port: " + std::to_string(port) +
                            "\n  state_dir: " + (dir_ / name).string() +
                            "\n  security: {insecure: true}\n"
                            "  state: {etcd: {endpoints: [" + eps + "], prefix: /mc/box, lease: 2s}}\n");
    return std::vector<std::string>{testing::ToolPath("modelcast-coordinator"), "--config", path.string()};
  };
  const int port_a = testing::FreePort(), port_b = testing::FreePort();
  testing::Child a(config("a", port_a));
  ASSERT_TRUE(a.WaitForOutput("listening on", 30s)) << a.Wait(1s).err;
  testing::Child b(config("b", port_b));
  ASSERT_TRUE(b.WaitForError("standing by", 30s)) << b.Wait(1s).err;
  EXPECT_EQ(b.Stdout().find("listening on"), std::string::npos) << "a standby does not serve";
  // A model registered with the leader.
  testing::MakePackage(dir_.path(), dir_ / "pkg", "tiny-llm");
  const std::string manifest = testing::ReadAll(dir_ / "pkg" / "manifest.json");
  rpc::SecurityConfig security;
  security.insecure = true;
  {
    auto c = rpc::Connect("127.0.0.1", port_a, security);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    rpc::CoordinatorClient coordinator(std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>((*c)->protocol, "Coordinator"));
    rpc::RegisterModelRequest reg;
    reg.header = rpc::MakeHeader(security, "test");
    reg.name = "tiny-llm";
    reg.manifest_json = manifest;
    rpc::ModelInfo info;
    coordinator.registerModel(info, reg);
  }
  const auto killed = std::chrono::steady_clock::now();
  a.Kill(SIGKILL);
  a.Wait(10s);
  ASSERT_TRUE(b.WaitForOutput("listening on", 10s)) << b.Wait(1s).err;
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_LT(took, 2 + 2.0) << "led within the lease and a third of it, plus its start";
  std::cerr << "standby listening " << took << " s after the leader was killed\n";
  auto c = rpc::Connect("127.0.0.1", port_b, security);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  rpc::CoordinatorClient coordinator(std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>((*c)->protocol, "Coordinator"));
  std::vector<rpc::ModelInfo> models;
  coordinator.listModels(models, rpc::MakeHeader(security, "test"));
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0].summary.name, "tiny-llm");
  // A standby stopped while it waits: at once, exit 0.
  testing::Child standby(config("c", testing::FreePort()));
  ASSERT_TRUE(standby.WaitForError("standing by", 30s)) << standby.Wait(1s).err;
  const auto asked = std::chrono::steady_clock::now();
  standby.Kill(SIGTERM);
  auto ended = standby.Wait(10s);
  EXPECT_EQ(ended.exit_code, 0) << ended.err;
  EXPECT_LT(std::chrono::steady_clock::now() - asked, 3s);
  b.Kill(SIGTERM);
  EXPECT_EQ(b.Wait(30s).exit_code, 0);
}


}  // namespace
}  // namespace modelcast::coordinator

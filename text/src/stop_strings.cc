#include "modelcast/text/stop_strings.h"

#include <algorithm>

#include "modelcast/text/tokenizer.h"

namespace modelcast::text {

Result<StopStrings> StopStrings::Make(std::vector<std::string> stops, std::string_view field) {
  const std::string f(field);
  if (stops.size() > kMaxCount) {
    return InvalidArgument(f + ": " + std::to_string(stops.size()) + " stop strings; at most " +
                           std::to_string(kMaxCount));
  }
  for (size_t k = 0; k < stops.size(); ++k) {
    const std::string at = f + "[" + std::to_string(k) + "]";
    if (stops[k].empty()) return InvalidArgument(at + " is empty");
    if (stops[k].size() > kMaxLength) {
      return InvalidArgument(at + " is " + std::to_string(stops[k].size()) + " bytes long; at most " +
                             std::to_string(kMaxLength));
    }
    if (auto bad = FirstInvalidUtf8(stops[k])) {
      return InvalidArgument(at + " is not valid UTF-8 (at byte " + std::to_string(*bad) + ")");
    }
  }
  StopStrings s;
  s.stops_ = std::move(stops);
  return s;
}

std::string StopStrings::Feed(std::string_view piece) {
  if (stopped_) return std::string();
  if (stops_.empty()) return std::string(piece);
  held_.append(piece);
  // Held text never contains a whole stop string, so a match ends in the new piece: the earliest
  // start among the stop strings found is where the answer ends.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Hold back the longest end of the text that begins some stop string. Stop strings are valid
  // UTF-8, so such an end starts on a character boundary.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopStrings::Finish() {
  std::string out;
  if (!stopped_) out.swap(held_);
  return out;
}

}  // namespace modelcast::text

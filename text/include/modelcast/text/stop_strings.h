// Stop strings, as OpenAI's `stop` ends an answer: the text stops before the first stop string
// it contains, and a stream never shows any part of one. Text is fed as the stream decoder gives
// it (whole characters); what could still be the start of a stop string is held back until the
// next piece settles it. When a piece completes a stop string, the answer ends at the earliest
// stop string the text then holds.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "modelcast/common/status.h"

namespace modelcast::text {

class StopStrings {
 public:
  // The stop strings, checked: each non-empty, valid UTF-8, at most kMaxLength bytes; at most
  // kMaxCount of them. `field` names them in errors ("'stop'").
  static Result<StopStrings> Make(std::vector<std::string> stops, std::string_view field = "'stop'");
  static constexpr size_t kMaxCount = 16;
  static constexpr size_t kMaxLength = 256;

  StopStrings() = default;  // no stop strings: everything passes at once

  // Adds the next piece of text; returns what may be shown now. Once stopped() nothing more is
  // shown, whatever is fed.
  std::string Feed(std::string_view piece);
  // The text held back, at the end of the answer (nothing once stopped()).
  std::string Finish();
  bool stopped() const { return stopped_; }
  bool empty() const { return stops_.empty(); }
  const std::vector<std::string>& stops() const { return stops_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace modelcast::text

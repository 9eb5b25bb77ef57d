// Waiting on a condition in tests: with a deadline, through one helper, never a bare sleep.
#pragma once

#include <chrono>
#include <thread>

namespace modelcast::testing {

// Looks at `condition` every `poll` until it holds or `timeout` has passed; returns whether it
// held (the condition is looked at once more at the deadline).
template <typename Condition, typename Rep, typename Period>
bool WaitUntil(Condition&& condition, std::chrono::duration<Rep, Period> timeout,
               std::chrono::milliseconds poll = std::chrono::milliseconds(20)) {
  const auto by = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= by) return condition();
    std::this_thread::sleep_for(poll);
  }
  return true;
}

}  // namespace modelcast::testing

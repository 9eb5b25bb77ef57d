// Human-readable sizes and rates, and their parsers for configs and flags.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "modelcast/common/status.h"

namespace modelcast {

// "512 B", "4.0 KiB", "1.23 GiB".
std::string FormatBytes(uint64_t bytes);
// Decimal, as network and disk people quote them: "1.23 GB/s".
std::string FormatRate(double bytes_per_second);

// "4096", "4KiB", "4 KiB", "16MiB", "1.5GiB", "2TiB", and decimal "4KB", "1GB" (powers of 1000).
Result<uint64_t> ParseByteSize(std::string_view text);
// A data rate in bytes per second: "32GB/s", "25GiB/s", "3.5 GB/s", "800MB/s".
Result<double> ParseByteRate(std::string_view text);
// A duration in seconds: "5us", "1.5ms", "2s", "100ns", "0".
Result<double> ParseDuration(std::string_view text);
// "12.3 ms", "4.56 s", "7.0 us".
std::string FormatSeconds(double seconds);
// A link rate in bits per second: "400Gbit", "400Gbps", "400G", "1gbit", "100Mbit", "2.5Gbps".
Result<double> ParseBitRate(std::string_view text);

}  // namespace modelcast

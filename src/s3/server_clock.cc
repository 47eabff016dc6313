#include "s3/server_clock.h"

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

namespace s3block {

double ServerClock::SteadyNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool ServerClock::Observe(std::string_view date_header, double sent, double received) {
  if (date_header.empty()) return false;
  const time_t t = curl_getdate(std::string(date_header).c_str(), nullptr);
  if (t <= 0) return false;
  ObserveSeconds(static_cast<double>(t), sent, received);
  return true;
}

void ServerClock::ObserveSeconds(double date, double sent, double received) {
  // A server that rounds its Date to the nearest second instead of down may be half a second
  // behind D: the interval starts a whole second earlier.
  const double low = date - 1 - received, high = date + 1 - sent;
  MutexLock lock(&mu_);
  if (known_) {
    // What was known, widened for the drift since it was learnt, then narrowed by this answer.
    const double drift = kMaxDrift * std::fabs(received - at_);
    const double old_low = low_ - drift, old_high = high_ + drift;
    if (low <= old_high && old_low <= high) {
      low_ = std::max(low, old_low);
      high_ = std::min(high, old_high);
    } else {
      // This answer does not fit: the server's clock was set, or the answer came from another
      // clock. Both intervals together, until answers that agree narrow it again.
      low_ = std::min(low, old_low);
      high_ = std::max(high, old_high);
    }
    at_ = received;
    return;
  }
  known_ = true;
  low_ = low;
  high_ = high;
  at_ = received;
}

bool ServerClock::Bounds(double now, double* earliest, double* latest) const {
  MutexLock lock(&mu_);
  if (!known_) return false;
  const double drift = kMaxDrift * std::fabs(now - at_);
  *earliest = now + low_ - drift;
  *latest = now + high_ + drift;
  return true;
}

}  // namespace s3block

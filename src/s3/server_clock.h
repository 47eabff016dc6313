// ServerClock: what time the S3 server thinks it is, learnt from the Date header of its answers,
// so that servers sharing a bucket agree on when an export's lease expires whatever their own
// clocks say.
//
// S3 accepts requests from a client whose clock is up to 15 minutes off (SigV4's limit), so
// machines sharing a bucket may disagree by minutes; a lease whose expiry each of them judged on
// its own clock would then let a second server take over from a live one. Judged on the server's
// clock, a lease is as good as the Date headers: the only clock everyone sees is the server's.
//
// A Date header is in whole seconds: the server's time when it answered was in [D - 1, D + 1)
// (servers round it down, to [D, D + 1); a whole second below allows for one that rounds to the
// nearest), and it answered between the moment the request was sent (s) and the moment its
// answer arrived (r), on this machine's steady clock. So the server's time minus the steady
// clock lies in [D - 1 - r, D + 1 - s]. Every answer narrows that interval (its width tends to
// a second and the round trip as answers arrive at different points of a second); the interval
// widens by kMaxDrift of the time since, for the two clocks' drift. An answer that does not fit
// (the server's clock was set, or a proxy answered with its own) widens it to hold both, until
// answers that agree narrow it again: wider bounds only make a lease last longer. Only answers
// of the S3 server itself count (not 5xx, which a proxy or load balancer may have made). Times
// in seconds, as doubles.
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_S3_SERVER_CLOCK_H_
#define S3BLOCK_S3_SERVER_CLOCK_H_

#include <string_view>

#include "util/mutex.h"

namespace s3block {

class ServerClock {
 public:
  // How fast the server's clock and this machine's steady clock may drift apart: 200 ppm, more
  // than any working clock.
  static constexpr double kMaxDrift = 200e-6;

  // The steady clock now, in seconds.
  static double SteadyNow();

  // An answer sent at `sent` and received at `received` (steady seconds) carried the Date
  // `date_header` (an HTTP date, "Tue, 01 Dec 2026 10:05:00 GMT"). Returns false, changing
  // nothing, if the header is not a date.
  bool Observe(std::string_view date_header, double sent, double received);
  // The same with the date already in seconds since the epoch.
  void ObserveSeconds(double date, double sent, double received);

  // Bounds of the server's time (seconds since the epoch) at steady time `now`: it is at least
  // *earliest and less than *latest. False if no answer carried a date yet; then the caller has
  // only its own clock to go by.
  bool Bounds(double now, double* earliest, double* latest) const;

 private:
  mutable Mutex mu_;
  bool known_ GUARDED_BY(mu_) = false;
  // The server's time minus the steady clock, at steady time `at_`.
  double low_ GUARDED_BY(mu_) = 0;
  double high_ GUARDED_BY(mu_) = 0;
  double at_ GUARDED_BY(mu_) = 0;
};

}  // namespace s3block

#endif  // S3BLOCK_S3_SERVER_CLOCK_H_

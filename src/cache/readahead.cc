#include "cache/readahead.h"

#include <algorithm>

namespace s3block {

SequentialStreams::Decision SequentialStreams::Note(uint64_t id, uint32_t len,
                                                    uint32_t block_size) {
  Decision d;
  ++clock_;
  Stream* s = nullptr;
  for (Stream& st : streams_) {
    if (st.run == 0) continue;
    // Before a stream is sequential it continues only in its block, or into the next one once
    // its block has been read whole: random reads into a few large blocks often land in the
    // same or the next block, but almost never cover a whole block before moving on. Once
    // sequential, the slack lets a reader's parallel requests arrive out of order.
    const bool match =
        st.run >= kMinSequentialRun
            ? id + kStreamSlack >= st.next && id <= std::max(st.ahead, st.next) + kStreamSlack
            : id + 1 == st.next || (id == st.next && st.covered >= block_size);
    if (match) {
      s = &st;
      break;
    }
  }
  if (s == nullptr) {
    Stream* oldest = &streams_[0];
    for (Stream& st : streams_)
      if (st.last_used < oldest->last_used) oldest = &st;
    *oldest = Stream{id + 1, id + 1, len, 1, 0, clock_};
    return d;
  }
  s->last_used = clock_;
  if (id < s->next) {  // a late request of the same reader, a repeat, or more of its block
    if (id + 1 != s->next) return d;
    s->covered += len;
    d.same_use = true;
    return d;
  }
  s->next = id + 1;
  s->covered = len;
  if (++s->run < kMinSequentialRun) return d;
  d.sequential = true;
  d.stream = static_cast<size_t>(s - streams_);
  return d;
}

SequentialStreams::Range SequentialStreams::Window(size_t stream, const Limits& limits) {
  Stream* s = &streams_[stream];
  // The window grows while the reader keeps going, but never beyond a quarter of the budget, so
  // read-ahead cannot evict what it fetched before the reader gets there.
  const uint64_t budget_blocks = limits.budget / limits.block_charge;
  const uint64_t max_window =
      std::max<uint64_t>(1, std::min<uint64_t>(limits.window, budget_blocks / 4));
  s->window = s->window == 0 ? kFirstWindow : s->window * 2;
  if (s->window > max_window) s->window = static_cast<uint32_t>(max_window);
  // s->next is one past the block just read.
  return Range{std::max(s->ahead, s->next), s->next + s->window};
}

}  // namespace s3block

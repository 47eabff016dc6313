#include "cache/block_overlay.h"

#include <cstring>

namespace s3block {

uint64_t BlockOverlay::NewCost(uint32_t block_size, uint32_t offset, size_t len) {
  const uint32_t page = std::min(kPage, block_size);
  const uint64_t touched = (offset + len + page - 1) / page - offset / page;
  return Bookkeeping(block_size, touched, page);
}

uint64_t BlockOverlay::CostAfter(uint32_t offset, size_t len) const {
  uint64_t more = 0;
  for (uint32_t p = offset / page_size_; p * uint64_t{page_size_} < offset + len; ++p)
    if (!pages_[p]) ++more;
  return CostWith(more);
}

void BlockOverlay::Apply(uint32_t offset, std::span<const uint8_t> data) {
  for (size_t done = 0; done < data.size();) {
    const uint32_t at = offset + static_cast<uint32_t>(done);
    const uint32_t p = at / page_size_, in = at % page_size_;
    const size_t n = std::min<size_t>(page_size_ - in, data.size() - done);
    if (!pages_[p]) {
      pages_[p] = std::make_unique<uint8_t[]>(page_size_);
      ++pages_used_;
    }
    std::memcpy(pages_[p].get() + in, data.data() + done, n);
    done += n;
  }
  for (uint32_t sec = offset / kSector; sec < (offset + data.size()) / kSector; ++sec) {
    if (Test(sec)) continue;
    bits_[sec / 64] |= uint64_t{1} << (sec % 64);
    ++present_;
  }
}

void BlockOverlay::CopyOut(uint32_t offset, std::span<uint8_t> out) const {
  if (out.empty()) return;
  if (!Covers(offset, out.size())) {
    if (base_)
      std::memcpy(out.data(), base_->data() + offset, out.size());
    else
      std::memset(out.data(), 0, out.size());
  }
  const uint64_t end = offset + uint64_t{out.size()};
  for (uint32_t sec = offset / kSector; sec * uint64_t{kSector} < end; ++sec) {
    if (!Test(sec)) continue;
    const uint64_t lo = std::max<uint64_t>(offset, sec * uint64_t{kSector});
    const uint64_t hi = std::min<uint64_t>(end, (sec + 1) * uint64_t{kSector});
    std::memcpy(out.data() + (lo - offset), pages_[lo / page_size_].get() + lo % page_size_,
                hi - lo);
  }
}

void BlockOverlay::MergeInto(uint8_t* block) const {
  const uint32_t per_page = page_size_ / kSector;
  for (uint32_t p = 0; p < pages_.size(); ++p) {
    if (!pages_[p]) continue;
    for (uint32_t i = 0; i < per_page;) {
      const uint32_t sec = p * per_page + i;
      if (!Test(sec)) {
        ++i;
        continue;
      }
      uint32_t run = 1;  // copy runs of present sectors at once
      while (i + run < per_page && Test(sec + run)) ++run;
      std::memcpy(block + uint64_t{sec} * kSector, pages_[p].get() + i * kSector, run * kSector);
      i += run;
    }
  }
}

}  // namespace s3block

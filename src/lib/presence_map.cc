#include "s3block/presence_map.h"

#include <bit>

namespace s3block {

PresenceMap::PresenceMap(uint64_t blocks)
    : blocks_(blocks), page_count_((blocks + kBitsPerPage - 1) / kBitsPerPage) {
  pages_.reset(new std::atomic<std::atomic<uint64_t>*>[page_count_ ? page_count_ : 1]);
  for (uint64_t i = 0; i < page_count_; ++i) pages_[i].store(nullptr, std::memory_order_relaxed);
}

PresenceMap::~PresenceMap() {
  for (uint64_t i = 0; i < page_count_; ++i) delete[] pages_[i].load();
}

std::atomic<uint64_t>* PresenceMap::PageForWrite(uint64_t page) {
  std::atomic<uint64_t>* p = Page(page);
  if (p != nullptr) return p;
  std::lock_guard<std::mutex> lock(alloc_mu_);
  p = Page(page);
  if (p == nullptr) {
    p = new std::atomic<uint64_t>[kWordsPerPage];
    for (uint64_t i = 0; i < kWordsPerPage; ++i) p[i].store(0, std::memory_order_relaxed);
    pages_[page].store(p, std::memory_order_release);
  }
  return p;
}

bool PresenceMap::Test(uint64_t id) const {
  if (id >= blocks_) return false;
  const std::atomic<uint64_t>* p = Page(id / kBitsPerPage);
  if (p == nullptr) return false;
  uint64_t bit = id % kBitsPerPage;
  return (p[bit / 64].load(std::memory_order_acquire) >> (bit % 64)) & 1;
}

void PresenceMap::Set(uint64_t id) {
  if (id >= blocks_) return;
  std::atomic<uint64_t>* p = PageForWrite(id / kBitsPerPage);
  uint64_t bit = id % kBitsPerPage;
  p[bit / 64].fetch_or(uint64_t{1} << (bit % 64), std::memory_order_acq_rel);
}

void PresenceMap::Clear(uint64_t id) {
  if (id >= blocks_) return;
  std::atomic<uint64_t>* p = Page(id / kBitsPerPage);
  if (p == nullptr) return;
  uint64_t bit = id % kBitsPerPage;
  p[bit / 64].fetch_and(~(uint64_t{1} << (bit % 64)), std::memory_order_acq_rel);
}

uint64_t PresenceMap::Count() const {
  uint64_t n = 0;
  for (uint64_t i = 0; i < page_count_; ++i) {
    const std::atomic<uint64_t>* p = Page(i);
    if (p == nullptr) continue;
    for (uint64_t w = 0; w < kWordsPerPage; ++w)
      n += static_cast<uint64_t>(std::popcount(p[w].load(std::memory_order_relaxed)));
  }
  return n;
}

uint64_t PresenceMap::FindNext(uint64_t from, uint64_t limit, bool value) const {
  if (limit > blocks_) limit = blocks_;
  uint64_t id = from;
  while (id < limit) {
    uint64_t page = id / kBitsPerPage;
    const std::atomic<uint64_t>* p = Page(page);
    if (p == nullptr) {
      if (!value) return id;  // every bit of a missing page is clear
      id = (page + 1) * kBitsPerPage;
      continue;
    }
    uint64_t bit = id % kBitsPerPage;
    uint64_t word = p[bit / 64].load(std::memory_order_acquire);
    if (!value) word = ~word;
    word >>= (bit % 64);
    if (word != 0) {
      uint64_t found = id + static_cast<uint64_t>(std::countr_zero(word));
      return found < limit ? found : limit;
    }
    id += 64 - (bit % 64);
  }
  return limit;
}

}  // namespace s3block

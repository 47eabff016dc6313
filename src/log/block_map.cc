#include "log/block_map.h"

#include <algorithm>
#include <bit>

namespace s3block::log {
namespace {

constexpr int kLenBits = 17;
constexpr int kOffBits = 22;
constexpr uint64_t kLenMask = (1ull << kLenBits) - 1;
constexpr uint64_t kOffMask = (1ull << kOffBits) - 1;

}  // namespace

uint64_t BlockMap::Pack(const Loc& loc) {
  return (uint64_t{loc.slot} << (kOffBits + kLenBits)) | (uint64_t{loc.offset / 16} << kLenBits) |
         uint64_t{loc.length / 16};
}

Loc BlockMap::Unpack(uint64_t packed) {
  Loc loc;
  loc.slot = static_cast<uint32_t>(packed >> (kOffBits + kLenBits));
  loc.offset = static_cast<uint32_t>(((packed >> kLenBits) & kOffMask) * 16);
  loc.length = static_cast<uint32_t>((packed & kLenMask) * 16);
  return loc;
}

uint32_t BlockMap::Page::Rank(uint32_t i) const {
  uint32_t r = 0;
  const uint32_t word = i >> 6;
  for (uint32_t w = 0; w < word; ++w) r += std::popcount(bits[w]);
  const uint64_t below = (i & 63) ? bits[word] & ((1ull << (i & 63)) - 1) : 0;
  return r + std::popcount(below);
}

uint64_t BlockMap::Page::ValueAt(uint32_t i) const {
  if (run) return values[0] + (uint64_t{i} * (values[0] & kLenMask) << kLenBits);
  return values[Rank(i)];
}

void BlockMap::Page::Expand() {
  if (!run) return;
  const uint64_t first = values[0];
  values.resize(kPageEntries);
  for (uint32_t i = 0; i < kPageEntries; ++i)
    values[i] = first + (uint64_t{i} * (first & kLenMask) << kLenBits);
  run = false;
}

void BlockMap::Page::TryCompact() {
  if (run || count != kPageEntries) return;
  const uint64_t first = values[0];
  const uint64_t step = (first & kLenMask) << kLenBits;
  for (uint32_t i = 1; i < kPageEntries; ++i)
    if (values[i] != first + i * step) return;
  values.assign(1, first);
  values.shrink_to_fit();
  run = true;
}

BlockMap::Page* BlockMap::MutablePage(uint64_t page_no) {
  if (page_no >= pages_.size()) pages_.resize(page_no + 1);
  std::shared_ptr<Page>& p = pages_[page_no];
  if (!p) p = std::make_shared<Page>();
  else if (p.use_count() > 1) p = std::make_shared<Page>(*p);
  return p.get();
}

bool BlockMap::Get(uint64_t id, Loc* loc) const {
  const uint64_t page_no = id >> kPageBits;
  if (page_no >= pages_.size() || !pages_[page_no]) return false;
  const Page& p = *pages_[page_no];
  const uint32_t i = static_cast<uint32_t>(id & (kPageEntries - 1));
  if (!p.Has(i)) return false;
  *loc = Unpack(p.ValueAt(i));
  return true;
}

bool BlockMap::Set(uint64_t id, const Loc& loc, Loc* old) {
  Page* p = MutablePage(id >> kPageBits);
  const uint32_t i = static_cast<uint32_t>(id & (kPageEntries - 1));
  const uint64_t v = Pack(loc);
  if (p->Has(i)) {
    if (p->run && p->ValueAt(i) == v) {
      if (old) *old = loc;
      return true;
    }
    p->Expand();
    const uint32_t r = p->Rank(i);
    if (old) *old = Unpack(p->values[r]);
    p->values[r] = v;
    if (i == kPageEntries - 1) p->TryCompact();
    return true;
  }
  const uint32_t r = p->Rank(i);
  // Grown by an eighth, not doubled: the entries' bytes are the map's budget.
  if (p->values.size() == p->values.capacity())
    p->values.reserve(std::min<size_t>(kPageEntries, p->values.size() + 4 + p->values.size() / 8));
  p->values.insert(p->values.begin() + r, v);
  p->bits[i >> 6] |= 1ull << (i & 63);
  ++p->count;
  ++size_;
  p->TryCompact();
  return false;
}

bool BlockMap::Erase(uint64_t id, Loc* old) {
  const uint64_t page_no = id >> kPageBits;
  if (page_no >= pages_.size() || !pages_[page_no]) return false;
  const uint32_t i = static_cast<uint32_t>(id & (kPageEntries - 1));
  if (!pages_[page_no]->Has(i)) return false;
  Page* p = MutablePage(page_no);
  p->Expand();
  const uint32_t r = p->Rank(i);
  if (old) *old = Unpack(p->values[r]);
  p->values.erase(p->values.begin() + r);
  p->bits[i >> 6] &= ~(1ull << (i & 63));
  --p->count;
  --size_;
  if (p->count == 0) pages_[page_no].reset();
  return true;
}

uint64_t BlockMap::MemoryBytes() const {
  uint64_t bytes = pages_.capacity() * sizeof(pages_[0]);
  for (const auto& p : pages_) {
    // The page, its shared_ptr's control block, and its entries.
    if (p) bytes += sizeof(Page) + 32 + p->values.capacity() * sizeof(uint64_t);
  }
  return bytes;
}

void BlockMap::ForEach(const std::function<void(uint64_t id, const Loc& loc)>& fn) const {
  for (uint64_t page_no = 0; page_no < pages_.size(); ++page_no) {
    const Page* p = pages_[page_no].get();
    if (!p) continue;
    for (uint32_t w = 0; w < p->bits.size(); ++w) {
      for (uint64_t b = p->bits[w]; b; b &= b - 1) {
        const uint32_t i = w * 64 + static_cast<uint32_t>(std::countr_zero(b));
        fn((page_no << kPageBits) | i, Unpack(p->ValueAt(i)));
      }
    }
  }
}

}  // namespace s3block::log

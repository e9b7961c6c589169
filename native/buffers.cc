// Aligned memory for O_DIRECT. V8 cannot allocate with a chosen alignment, so buffers
// come from posix_memalign and are lent to JS as external ArrayBuffers that free
// themselves when collected. The JS pool (src/engine/buffer-pool.ts) allocates big
// slabs here and reuses blocks of them, so the hot path never allocates.

#include "engine.h"

#include <cstdlib>
#include <cstring>

namespace cistern {

namespace {

// Largest single allocation: one slab of the buffer pool. 1 GiB keeps a typo in a
// size from exhausting memory in one call.
constexpr uint64_t kMaxAllocBytes = 1ull << 30;
// Alignments beyond a huge page buy nothing for direct I/O.
constexpr uint64_t kMaxAlignBytes = 2ull << 20;

void FreeAligned(Napi::Env env, void* data, size_t* sizeBytes) {
  int64_t ignored = 0;
  napi_adjust_external_memory(env, -static_cast<int64_t>(*sizeBytes), &ignored);
  std::free(data);
  delete sizeBytes;
}

}  // namespace

// allocAligned(sizeBytes, alignBytes) -> ArrayBuffer, zero-filled
Napi::Value AllocAligned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CHECK(env, info[0].IsNumber() && info[1].IsNumber(), "bad arguments");
  double size = info[0].As<Napi::Number>().DoubleValue();
  double align = info[1].As<Napi::Number>().DoubleValue();
  CHECK(env, size >= 1 && size <= static_cast<double>(kMaxAllocBytes), "size out of range");
  CHECK(env, align >= sizeof(void*) && align <= static_cast<double>(kMaxAlignBytes),
        "alignment out of range");
  size_t sizeBytes = static_cast<size_t>(size);
  size_t alignBytes = static_cast<size_t>(align);
  CHECK(env, static_cast<double>(sizeBytes) == size && static_cast<double>(alignBytes) == align,
        "size and alignment must be integers");
  CHECK(env, (alignBytes & (alignBytes - 1)) == 0, "alignment must be a power of two");
  void* data = nullptr;
  if (posix_memalign(&data, alignBytes, sizeBytes) != 0) {
    throw MakeSyscallError(env, {ENOMEM, "posix_memalign", ""}, "(buffer)");
  }
  // Zeroed so that a fresh buffer never carries another request's bytes.
  std::memset(data, 0, sizeBytes);
  int64_t ignored = 0;
  napi_adjust_external_memory(env, static_cast<int64_t>(sizeBytes), &ignored);
  return Napi::ArrayBuffer::New(env, data, sizeBytes, FreeAligned, new size_t(sizeBytes));
}

// addressAlignment(view) -> the largest power of two (capped at 1 MiB) dividing the
// view's address; for tests and assertions, not for the hot path.
Napi::Value AddressAlignment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CHECK(env, info[0].IsTypedArray(), "expected a typed array");
  auto view = info[0].As<Napi::TypedArray>();
  auto address = reinterpret_cast<uintptr_t>(view.ArrayBuffer().Data()) + view.ByteOffset();
  uintptr_t alignment = 1;
  while (alignment < (1u << 20) && address % (alignment * 2) == 0) alignment *= 2;
  return Napi::Number::New(env, static_cast<double>(alignment));
}

}  // namespace cistern

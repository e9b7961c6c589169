// The native I/O engine: one Engine per open device, holding the file descriptor, a
// kernel AIO context, and an eventfd that the kernel signals on every completion. The
// eventfd is watched by a uv_poll_t on the Node event loop, so no thread ever blocks
// per I/O. JavaScript validates every argument first; the functions here check them
// again (CHECK throws, which surfaces as a JS exception: a bug, not a disk error).

#pragma once

#include <napi.h>
#include <uv.h>
#include <linux/aio_abi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cistern {

// Bounds. The JS wrapper has the same numbers (src/engine/limits.ts) and checks first.
// 1024 in flight per device is far beyond what NVMe needs per queue at 4 KiB and keeps
// each context well inside the system-wide aio-max-nr (65536 by default).
constexpr uint32_t kMaxQueueDepth = 1024;
// Largest single read or write: aio results travel to JS as int32, and 64 MiB is far
// above any object-store block while staying well inside that.
constexpr uint64_t kMaxIoBytes = 64u << 20;
// Doubles per submission record in the shared submission area: op, slot, offset, spare.
constexpr uint32_t kSubmitStride = 4;
// Int32s per completion record in the shared completion area: slot, result.
constexpr uint32_t kCompleteStride = 2;
// Int32s per synchronous-failure record written back into the submission area.
constexpr uint32_t kFailureStride = 3;

// Operation codes in a submission record; the JS side uses the same numbers.
enum Op : uint32_t { kOpRead = 1, kOpWrite = 2, kOpWriteFua = 3, kOpFdsync = 4 };

// Why an operation failed at submission, beyond its errno.
enum FailureReason : int32_t { kReasonSubmit = 0, kReasonMisalignedBuffer = 1 };

struct Failure {
  uint32_t slot;
  int32_t result;
  int32_t reason;
};

struct Engine {
  napi_env env = nullptr;
  int fd = -1;
  int eventFd = -1;
  aio_context_t context = 0;
  uv_poll_t poll{};
  bool readOnly = false;
  bool isBlockDevice = false;
  uint32_t queueDepth = 0;
  uint32_t submitChunkMax = 0;  // iocbs per io_submit call (see SubmitBatch)
  uint32_t inFlight = 0;
  uint32_t blockingInFlight = 0;  // fdatasync/fallocate on the threadpool
  uint32_t closeStepsLeft = 0;    // poll handle closed, kernel resources released
  uint64_t sizeBytes = 0;
  uint32_t offsetAlignBytes = 0;
  uint32_t memoryAlignBytes = 0;
  std::vector<iocb> iocbs;        // one per slot, reused: no allocation per I/O
  std::vector<iocb*> batch;       // pointers handed to io_submit
  std::vector<io_event> events;   // reaped completions
  std::vector<uint8_t> slotBusy;  // catches a slot reused while in flight (a JS bug)
  std::vector<Failure> failures;
  double* submitArea = nullptr;
  size_t submitAreaLength = 0;
  int32_t* completionArea = nullptr;
  size_t completionAreaLength = 0;
  Napi::Reference<Napi::Float64Array> submitAreaRef;
  Napi::Reference<Napi::Int32Array> completionAreaRef;
  Napi::FunctionReference onComplete;
  Napi::AsyncContext* asyncContext = nullptr;
};

// What JS holds: a small box that outlives the Engine, so a call on a closed handle
// finds nullptr instead of freed memory.
struct EngineBox {
  Engine* engine = nullptr;
};

// Filled by ProbeDevice: what the kernel says about the file or block device.
struct DeviceInfo {
  bool isBlockDevice = false;
  uint64_t sizeBytes = 0;
  uint32_t offsetAlignBytes = 0;
  uint32_t memoryAlignBytes = 0;
  std::string alignmentSource;
};

// A failed system call, thrown to JS as an Error with errno, syscall and reason.
struct SyscallFailure {
  int error;
  const char* syscall;
  const char* reason;  // a stable hint for the JS message ("tmpfs", "not-block-or-file")
};

#define CHECK(env, condition, message)                                              \
  do {                                                                              \
    if (!(condition)) throw Napi::Error::New((env), std::string("cistern_engine: ") + \
                                                        (message));                 \
  } while (0)

Napi::Error MakeSyscallError(Napi::Env env, const SyscallFailure& failure,
                             const std::string& path);
Engine* UnwrapEngine(const Napi::CallbackInfo& info, size_t index);

// probe.cc: returns true, or false with `failure` filled in.
bool ProbeDevice(int fd, DeviceInfo* info, SyscallFailure* failure);

// engine.cc
Napi::Value Open(const Napi::CallbackInfo& info);
Napi::Value Submit(const Napi::CallbackInfo& info);
Napi::Value Close(const Napi::CallbackInfo& info);
Napi::Value LiveEngines(const Napi::CallbackInfo& info);

// blocking.cc
Napi::Value Fdatasync(const Napi::CallbackInfo& info);
Napi::Value Fallocate(const Napi::CallbackInfo& info);

// buffers.cc
Napi::Value AllocAligned(const Napi::CallbackInfo& info);
Napi::Value AddressAlignment(const Napi::CallbackInfo& info);

}  // namespace cistern

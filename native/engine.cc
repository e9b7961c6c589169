// Open, submit a batch, reap completions, close. Kernel AIO through raw syscalls:
// glibc has no wrappers for io_setup and friends, and libaio would only wrap them.
//
// Data flow per device, all on the event-loop thread:
//   JS fills the shared submission area (op, slot, offset) and an array of buffers,
//   then calls Submit once per loop turn: one crossing into C++ for the whole batch,
//   handed to the kernel in io_submit calls of submitChunkMax iocbs (see SubmitBatch).
//   The kernel completes iocbs and bumps the eventfd (IOCB_FLAG_RESFD); libuv sees
//   it readable, OnEventFdReadable reaps every completion with io_getevents into the
//   shared completion area and calls JS once with the count.

#include "engine.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>

namespace cistern {

namespace {

// Engines opened and not yet closed, in every environment (worker threads too): the
// leak test reads it to prove AIO contexts are destroyed.
std::atomic<uint32_t> liveEngines{0};

long IoSetup(unsigned events, aio_context_t* context) {
  return syscall(SYS_io_setup, events, context);
}
long IoDestroy(aio_context_t context) { return syscall(SYS_io_destroy, context); }
long IoSubmit(aio_context_t context, long count, iocb** iocbs) {
  return syscall(SYS_io_submit, context, count, iocbs);
}
long IoGetevents(aio_context_t context, long minimum, long maximum, io_event* events,
                 timespec* timeout) {
  return syscall(SYS_io_getevents, context, minimum, maximum, events, timeout);
}

void ReleaseKernelResources(Engine* engine) {
  if (engine->context != 0) IoDestroy(engine->context);  // waits for in-flight iocbs
  if (engine->eventFd >= 0) close(engine->eventFd);
  if (engine->fd >= 0) close(engine->fd);
  engine->context = 0;
  engine->eventFd = -1;
  engine->fd = -1;
}

// Drops what the engine holds of JS; done while the environment is still alive.
void ReleaseReferences(Engine* engine) {
  engine->onComplete.Reset();
  engine->submitAreaRef.Reset();
  engine->completionAreaRef.Reset();
  delete engine->asyncContext;
  engine->asyncContext = nullptr;
}

// Reaps everything the kernel has finished into the completion area; returns the count.
uint32_t Reap(Engine* engine) {
  uint64_t wakeups = 0;
  // Drains the eventfd counter; EAGAIN only means another wake already drained it.
  (void)!read(engine->eventFd, &wakeups, sizeof wakeups);
  uint32_t reaped = 0;
  timespec noWait{0, 0};
  // Bounded: at most queueDepth iocbs are in flight, and none are submitted meanwhile.
  while (reaped < engine->inFlight) {
    long count = IoGetevents(engine->context, 0, engine->queueDepth, engine->events.data(),
                             &noWait);
    if (count < 0 && errno == EINTR) continue;
    if (count < 0) Napi::Error::Fatal("cistern_engine", "io_getevents failed");
    if (count == 0) break;
    for (long i = 0; i < count; i++) {
      const io_event& event = engine->events[i];
      uint32_t slot = static_cast<uint32_t>(event.data);
      if (slot >= engine->queueDepth || !engine->slotBusy[slot]) {
        Napi::Error::Fatal("cistern_engine", "completion for a slot not in flight");
      }
      engine->slotBusy[slot] = 0;
      engine->completionArea[reaped * kCompleteStride] = static_cast<int32_t>(slot);
      engine->completionArea[reaped * kCompleteStride + 1] = static_cast<int32_t>(event.res);
      reaped++;
    }
  }
  engine->inFlight -= reaped;
  return reaped;
}

void OnEventFdReadable(uv_poll_t* poll, int pollStatus, int events) {
  (void)pollStatus;  // an error status still means: look for completions
  (void)events;
  Engine* engine = static_cast<Engine*>(poll->data);
  uint32_t reaped = Reap(engine);
  // Nothing in flight: let the process exit if nothing else keeps it alive.
  if (engine->inFlight == 0) uv_unref(reinterpret_cast<uv_handle_t*>(&engine->poll));
  if (reaped == 0) return;
  // Raw N-API here, not the C++ wrapper: this runs from libuv with no JS frame below, so
  // a failure must not become a C++ exception (it would abort the process), and the
  // environment may be shutting down (process.exit in a worker) mid-callback.
  napi_env env = engine->env;
  napi_handle_scope scope = nullptr;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value global = nullptr;
  napi_value callback = nullptr;
  napi_value count = nullptr;
  napi_value ignored = nullptr;
  napi_get_global(env, &global);
  napi_get_reference_value(env, static_cast<napi_ref>(engine->onComplete), &callback);
  napi_create_uint32(env, reaped, &count);
  // make_callback runs process.nextTick callbacks and promise reactions afterwards.
  napi_status status = napi_make_callback(env, *engine->asyncContext, global, callback, 1,
                                          &count, &ignored);
  if (status == napi_pending_exception) {
    // A completion callback threw: report it like any uncaught exception.
    napi_value error = nullptr;
    if (napi_get_and_clear_last_exception(env, &error) == napi_ok) napi_fatal_exception(env, error);
  }
  napi_close_handle_scope(env, scope);
}

// The engine is freed once both halves of closing are done: libuv letting go of the
// poll handle, and the threadpool releasing the kernel resources.
void FinishClose(Engine* engine) {
  engine->closeStepsLeft--;
  if (engine->closeStepsLeft == 0) delete engine;
}

void OnPollClosed(uv_handle_t* handle) { FinishClose(static_cast<Engine*>(handle->data)); }

// io_destroy sleeps until an RCU grace period passes (about 30 ms here), so it runs on
// the threadpool: closing a device must not stall every other device's completions.
class CloseWork : public Napi::AsyncWorker {
 public:
  CloseWork(Napi::Function callback, Engine* engine)
      : Napi::AsyncWorker(callback, "cistern_engine_close"), engine_(engine) {}
  void Execute() override { ReleaseKernelResources(engine_); }
  void OnOK() override {
    liveEngines--;
    FinishClose(engine_);
    Callback().Call({});
  }

 private:
  Engine* engine_;
};

void FinalizeBox(Napi::Env env, EngineBox* box) {
  (void)env;
  // A handle collected without close() leaks its engine on purpose: the completion
  // callback keeps the JS side alive anyway, and closing here could race live I/O.
  delete box;
}

uint64_t ToOffset(Napi::Env env, double value) {
  CHECK(env, value >= 0 && value <= 9007199254740991.0 && std::floor(value) == value,
        "offset must be a safe non-negative integer");
  return static_cast<uint64_t>(value);
}

// Fills the slot's iocb from one submission record; false when the op failed already.
bool PrepareIocb(Napi::Env env, Engine* engine, const double* record, napi_value buffer) {
  uint32_t op = static_cast<uint32_t>(record[0]);
  uint32_t slot = static_cast<uint32_t>(record[1]);
  uint64_t offset = ToOffset(env, record[2]);
  CHECK(env, slot < engine->queueDepth, "slot out of range");
  CHECK(env, !engine->slotBusy[slot], "slot already in flight");
  iocb* control = &engine->iocbs[slot];
  std::memset(control, 0, sizeof *control);
  control->aio_data = slot;
  control->aio_fildes = static_cast<uint32_t>(engine->fd);
  control->aio_flags = IOCB_FLAG_RESFD;
  control->aio_resfd = static_cast<uint32_t>(engine->eventFd);
  if (op == kOpFdsync) {
    control->aio_lio_opcode = IOCB_CMD_FDSYNC;
    return true;
  }
  CHECK(env, op == kOpRead || op == kOpWrite || op == kOpWriteFua, "unknown op");
  CHECK(env, op == kOpRead || !engine->readOnly, "write on a read-only device");
  void* data = nullptr;
  size_t lengthBytes = 0;
  napi_typedarray_type type;
  napi_status status =
      napi_get_typedarray_info(env, buffer, &type, &lengthBytes, &data, nullptr, nullptr);
  CHECK(env, status == napi_ok && type == napi_uint8_array, "buffer must be a Uint8Array");
  CHECK(env, lengthBytes > 0 && lengthBytes <= kMaxIoBytes, "length out of range");
  CHECK(env, (offset | lengthBytes) % engine->offsetAlignBytes == 0, "misaligned offset/length");
  CHECK(env, offset + lengthBytes <= engine->sizeBytes, "I/O beyond the end of the device");
  if (reinterpret_cast<uintptr_t>(data) % engine->memoryAlignBytes != 0) {
    // JS cannot see addresses, so this one is the caller's error, not a bug.
    engine->failures.push_back({slot, -EINVAL, kReasonMisalignedBuffer});
    return false;
  }
  control->aio_lio_opcode = op == kOpRead ? IOCB_CMD_PREAD : IOCB_CMD_PWRITE;
  control->aio_buf = reinterpret_cast<uintptr_t>(data);
  control->aio_nbytes = lengthBytes;
  control->aio_offset = static_cast<int64_t>(offset);
  control->aio_rw_flags = op == kOpWriteFua ? RWF_DSYNC : 0;
  return true;
}

// Submits the prepared batch in io_submit calls of at most submitChunkMax iocbs; iocbs
// the kernel refuses become failures. Why chunks: io_submit plugs the block layer for
// more than two iocbs, so a whole turn's batch reaches the device as one burst, all of
// it completes together, and the queue convoys (measured on virtio at QD 32: about
// 0.6-0.8x fio's IOPS with one io_submit per turn, 0.9-1.0x with chunks of 2).
void SubmitBatch(Engine* engine) {
  size_t total = engine->batch.size();
  size_t done = 0;
  // Bounded: every pass submits at least one iocb or fails exactly one.
  while (done < total) {
    size_t chunk = std::min<size_t>(total - done, engine->submitChunkMax);
    long submitted = IoSubmit(engine->context, static_cast<long>(chunk),
                              engine->batch.data() + done);
    if (submitted < 0 && errno == EINTR) continue;
    if (submitted > 0) {
      engine->inFlight += static_cast<uint32_t>(submitted);
      done += static_cast<size_t>(submitted);
      continue;
    }
    int error = submitted < 0 ? errno : EAGAIN;
    uint32_t slot = static_cast<uint32_t>(engine->batch[done]->aio_data);
    engine->slotBusy[slot] = 0;
    engine->failures.push_back({slot, -error, kReasonSubmit});
    done++;
  }
}

// When the environment ends (process exit, a worker terminating) with the device still
// open, the poll handle must go or Node aborts on closing a loop with live handles; the
// kernel resources go too, synchronously, since no threadpool work runs after this.
void OnEnvCleanup(void* argument) {
  Engine* engine = static_cast<Engine*>(argument);
  uv_poll_stop(&engine->poll);
  ReleaseKernelResources(engine);
  ReleaseReferences(engine);
  liveEngines--;
  // No close callback: the addon may be unloaded before libuv would call it. The
  // Engine is leaked on purpose, since libuv still touches the embedded handle later.
  uv_close(reinterpret_cast<uv_handle_t*>(&engine->poll), nullptr);
}

}  // namespace

Napi::Error MakeSyscallError(Napi::Env env, const SyscallFailure& failure,
                             const std::string& path) {
  std::string message = std::string(failure.syscall) + " " + path + ": " +
                        std::strerror(failure.error);
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("errno", Napi::Number::New(env, failure.error));
  error.Set("syscall", Napi::String::New(env, failure.syscall));
  error.Set("reason", Napi::String::New(env, failure.reason));
  return error;
}

Engine* UnwrapEngine(const Napi::CallbackInfo& info, size_t index) {
  Napi::Env env = info.Env();
  CHECK(env, info[index].IsExternal(), "expected an engine handle");
  EngineBox* box = info[index].As<Napi::External<EngineBox>>().Data();
  CHECK(env, box->engine != nullptr, "engine handle used after close");
  return box->engine;
}

// open(path, readOnly, queueDepth, submitChunkMax, submitArea, completionArea, onComplete)
//   -> { handle, sizeBytes, offsetAlignBytes, memoryAlignBytes, isBlockDevice,
//        alignmentSource }
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CHECK(env, info.Length() == 7, "open takes 7 arguments");
  CHECK(env, info[0].IsString() && info[1].IsBoolean() && info[2].IsNumber(), "bad arguments");
  CHECK(env, info[3].IsNumber() && info[4].IsTypedArray() && info[5].IsTypedArray(),
        "bad arguments");
  CHECK(env, info[6].IsFunction(), "bad arguments");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  bool readOnly = info[1].As<Napi::Boolean>().Value();
  uint32_t queueDepth = info[2].As<Napi::Number>().Uint32Value();
  uint32_t submitChunkMax = info[3].As<Napi::Number>().Uint32Value();
  auto submitArea = info[4].As<Napi::TypedArray>();
  auto completionArea = info[5].As<Napi::TypedArray>();
  CHECK(env, queueDepth >= 1 && queueDepth <= kMaxQueueDepth, "queue depth out of range");
  CHECK(env, submitChunkMax >= 1 && submitChunkMax <= queueDepth, "submit chunk out of range");
  CHECK(env, submitArea.TypedArrayType() == napi_float64_array, "submit area: Float64Array");
  CHECK(env, completionArea.TypedArrayType() == napi_int32_array, "completion area: Int32Array");
  CHECK(env, submitArea.ElementLength() >= queueDepth * kSubmitStride, "submit area too small");
  CHECK(env, completionArea.ElementLength() >= queueDepth * kCompleteStride,
        "completion area too small");

  int flags = (readOnly ? O_RDONLY : O_RDWR) | O_DIRECT | O_CLOEXEC;
  int fd = open(path.c_str(), flags);
  if (fd < 0) throw MakeSyscallError(env, {errno, "open", ""}, path);
  DeviceInfo device;
  SyscallFailure failure{0, "", ""};
  if (!ProbeDevice(fd, &device, &failure)) {
    close(fd);
    throw MakeSyscallError(env, failure, path);
  }

  auto* engine = new Engine();
  engine->env = env;
  engine->fd = fd;
  engine->readOnly = readOnly;
  engine->isBlockDevice = device.isBlockDevice;
  engine->queueDepth = queueDepth;
  engine->submitChunkMax = submitChunkMax;
  engine->sizeBytes = device.sizeBytes;
  engine->offsetAlignBytes = device.offsetAlignBytes;
  engine->memoryAlignBytes = device.memoryAlignBytes;
  engine->eventFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (engine->eventFd < 0) failure = {errno, "eventfd", ""};
  if (engine->eventFd >= 0 && IoSetup(queueDepth, &engine->context) != 0) {
    failure = {errno, "io_setup", ""};
    engine->context = 0;
  }
  if (failure.error != 0) {
    ReleaseKernelResources(engine);
    delete engine;
    throw MakeSyscallError(env, failure, path);
  }

  engine->iocbs.resize(queueDepth);
  engine->batch.reserve(queueDepth);
  engine->events.resize(queueDepth);
  engine->slotBusy.assign(queueDepth, 0);
  engine->failures.reserve(queueDepth);
  engine->submitArea = static_cast<double*>(submitArea.ArrayBuffer().Data()) +
                       submitArea.ByteOffset() / sizeof(double);
  engine->submitAreaLength = submitArea.ElementLength();
  engine->completionArea = static_cast<int32_t*>(completionArea.ArrayBuffer().Data()) +
                           completionArea.ByteOffset() / sizeof(int32_t);
  engine->completionAreaLength = completionArea.ElementLength();
  engine->submitAreaRef = Napi::Persistent(info[4].As<Napi::Float64Array>());
  engine->completionAreaRef = Napi::Persistent(info[5].As<Napi::Int32Array>());
  engine->onComplete = Napi::Persistent(info[6].As<Napi::Function>());
  engine->asyncContext = new Napi::AsyncContext(env, "cistern_engine");

  uv_loop_t* loop = nullptr;
  CHECK(env, napi_get_uv_event_loop(env, &loop) == napi_ok, "no event loop");
  CHECK(env, uv_poll_init(loop, &engine->poll, engine->eventFd) == 0, "uv_poll_init");
  engine->poll.data = engine;
  CHECK(env, uv_poll_start(&engine->poll, UV_READABLE, OnEventFdReadable) == 0,
        "uv_poll_start");
  uv_unref(reinterpret_cast<uv_handle_t*>(&engine->poll));
  CHECK(env, napi_add_env_cleanup_hook(env, OnEnvCleanup, engine) == napi_ok, "cleanup hook");
  liveEngines++;

  auto* box = new EngineBox{engine};
  Napi::Object result = Napi::Object::New(env);
  result.Set("handle", Napi::External<EngineBox>::New(env, box, FinalizeBox));
  result.Set("sizeBytes", Napi::Number::New(env, static_cast<double>(device.sizeBytes)));
  result.Set("offsetAlignBytes", Napi::Number::New(env, device.offsetAlignBytes));
  result.Set("memoryAlignBytes", Napi::Number::New(env, device.memoryAlignBytes));
  result.Set("isBlockDevice", Napi::Boolean::New(env, device.isBlockDevice));
  result.Set("alignmentSource", Napi::String::New(env, device.alignmentSource));
  return result;
}

// submit(handle, buffers, count) -> number of ops that failed at submission; their
// (slot, -errno, reason) records are written over the start of the submission area.
Napi::Value Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Engine* engine = UnwrapEngine(info, 0);
  CHECK(env, info[1].IsArray() && info[2].IsNumber(), "bad arguments");
  auto buffers = info[1].As<Napi::Array>();
  uint32_t count = info[2].As<Napi::Number>().Uint32Value();
  CHECK(env, count >= 1 && count <= engine->queueDepth - engine->inFlight, "batch too large");
  CHECK(env, buffers.Length() >= count, "fewer buffers than ops");
  engine->batch.clear();
  engine->failures.clear();
  for (uint32_t i = 0; i < count; i++) {
    const double* record = engine->submitArea + i * kSubmitStride;
    napi_value buffer = buffers.Get(i);
    if (!PrepareIocb(env, engine, record, buffer)) continue;
    uint32_t slot = static_cast<uint32_t>(record[1]);
    engine->slotBusy[slot] = 1;
    engine->batch.push_back(&engine->iocbs[slot]);
  }
  if (engine->inFlight == 0 && !engine->batch.empty()) {
    uv_ref(reinterpret_cast<uv_handle_t*>(&engine->poll));  // pending I/O keeps Node alive
  }
  SubmitBatch(engine);
  if (engine->inFlight == 0) uv_unref(reinterpret_cast<uv_handle_t*>(&engine->poll));
  auto* out = reinterpret_cast<int32_t*>(engine->submitArea);
  for (size_t i = 0; i < engine->failures.size(); i++) {
    out[i * kFailureStride] = static_cast<int32_t>(engine->failures[i].slot);
    out[i * kFailureStride + 1] = engine->failures[i].result;
    out[i * kFailureStride + 2] = engine->failures[i].reason;
  }
  return Napi::Number::New(env, static_cast<double>(engine->failures.size()));
}

// close(handle, callback()): the caller has waited for every I/O. Completions stop
// now; the fd, eventfd and AIO context are released on the threadpool, then callback.
Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Engine* engine = UnwrapEngine(info, 0);
  CHECK(env, info[1].IsFunction(), "close needs a callback");
  CHECK(env, engine->inFlight == 0, "close with I/O in flight");
  CHECK(env, engine->blockingInFlight == 0, "close with flush/fallocate in flight");
  info[0].As<Napi::External<EngineBox>>().Data()->engine = nullptr;
  napi_remove_env_cleanup_hook(env, OnEnvCleanup, engine);
  uv_poll_stop(&engine->poll);
  ReleaseReferences(engine);
  engine->closeStepsLeft = 2;
  uv_close(reinterpret_cast<uv_handle_t*>(&engine->poll), OnPollClosed);
  (new CloseWork(info[1].As<Napi::Function>(), engine))->Queue();
  return env.Undefined();
}

Napi::Value LiveEngines(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), liveEngines.load());
}

}  // namespace cistern

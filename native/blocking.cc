// The operations kernel AIO cannot do asynchronously, run on the libuv threadpool:
// fdatasync (the fallback when IOCB_CMD_FDSYNC is refused) and fallocate (punch hole,
// zero range). The worker touches only the fd and plain numbers, never JS; the
// callback gets the errno (0 on success) so that JS maps every error in one place.

#include "engine.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>

namespace cistern {

namespace {

enum Space : uint32_t { kPunchHole = 1, kZeroRange = 2 };

class BlockingWork : public Napi::AsyncWorker {
 public:
  BlockingWork(Napi::Function callback, Engine* engine)
      : Napi::AsyncWorker(callback, "cistern_engine_blocking"), engine_(engine),
        fd_(engine->fd), isBlockDevice_(engine->isBlockDevice) {
    engine_->blockingInFlight++;
  }

 protected:
  void OnOK() override {
    engine_->blockingInFlight--;
    Callback().Call({Napi::Number::New(Env(), error_)});
  }

  Engine* engine_;  // alive: Close asserts blockingInFlight == 0
  int fd_;
  bool isBlockDevice_;
  int error_ = 0;
};

class FdatasyncWork : public BlockingWork {
 public:
  using BlockingWork::BlockingWork;
  void Execute() override {
    while (fdatasync(fd_) != 0) {
      if (errno == EINTR) continue;
      error_ = errno;
      return;
    }
  }
};

class FallocateWork : public BlockingWork {
 public:
  FallocateWork(Napi::Function callback, Engine* engine, uint32_t space, uint64_t offset,
                uint64_t length)
      : BlockingWork(callback, engine), space_(space), offset_(offset), length_(length) {}

  void Execute() override {
    int mode = FALLOC_FL_KEEP_SIZE |
               (space_ == kPunchHole ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
    if (Allocate(mode) == 0) return;
    if (error_ != EOPNOTSUPP) return;
    // Fallbacks keep the contract (the range reads as zeros) where the fast path is
    // missing: a device without unmap-with-zeroes, a filesystem without ZERO_RANGE.
    if (isBlockDevice_) {
      error_ = 0;
      uint64_t range[2] = {offset_, length_};
      if (ioctl(fd_, BLKZEROOUT, range) != 0) error_ = errno;
    } else if (space_ == kZeroRange) {
      error_ = 0;
      if (Allocate(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0) return;
      Allocate(FALLOC_FL_KEEP_SIZE);
    }
  }

 private:
  int Allocate(int mode) {
    while (fallocate(fd_, mode, static_cast<off_t>(offset_), static_cast<off_t>(length_)) != 0) {
      if (errno == EINTR) continue;
      error_ = errno;
      return -1;
    }
    return 0;
  }

  uint32_t space_;
  uint64_t offset_;
  uint64_t length_;
};

uint64_t ToSafeInteger(Napi::Env env, Napi::Value value, const char* what) {
  CHECK(env, value.IsNumber(), what);
  double number = value.As<Napi::Number>().DoubleValue();
  CHECK(env, number >= 0 && number <= 9007199254740991.0 && std::floor(number) == number, what);
  return static_cast<uint64_t>(number);
}

}  // namespace

// fdatasync(handle, callback(errno))
Napi::Value Fdatasync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Engine* engine = UnwrapEngine(info, 0);
  CHECK(env, info[1].IsFunction(), "fdatasync needs a callback");
  (new FdatasyncWork(info[1].As<Napi::Function>(), engine))->Queue();
  return env.Undefined();
}

// fallocate(handle, space: 1 punch | 2 zero, offset, length, callback(errno))
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Engine* engine = UnwrapEngine(info, 0);
  CHECK(env, info[1].IsNumber() && info[4].IsFunction(), "bad arguments");
  uint32_t space = info[1].As<Napi::Number>().Uint32Value();
  uint64_t offset = ToSafeInteger(env, info[2], "offset must be a safe non-negative integer");
  uint64_t length = ToSafeInteger(env, info[3], "length must be a safe non-negative integer");
  CHECK(env, space == kPunchHole || space == kZeroRange, "unknown fallocate space op");
  CHECK(env, !engine->readOnly, "fallocate on a read-only device");
  CHECK(env, length > 0 && (offset | length) % engine->offsetAlignBytes == 0,
        "misaligned fallocate range");
  CHECK(env, offset + length <= engine->sizeBytes, "fallocate beyond the end of the device");
  (new FallocateWork(info[4].As<Napi::Function>(), engine, space, offset, length))->Queue();
  return env.Undefined();
}

}  // namespace cistern

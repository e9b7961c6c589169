// Module entry: the whole native surface of Cistern. Everything here works on opaque
// engine handles; src/engine/native.ts is the only module that loads it.

#include "engine.h"

namespace cistern {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("submit", Napi::Function::New(env, Submit, "submit"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("fdatasync", Napi::Function::New(env, Fdatasync, "fdatasync"));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("allocAligned", Napi::Function::New(env, AllocAligned, "allocAligned"));
  exports.Set("addressAlignment", Napi::Function::New(env, AddressAlignment, "addressAlignment"));
  exports.Set("liveEngines", Napi::Function::New(env, LiveEngines, "liveEngines"));
  exports.Set("maxQueueDepth", Napi::Number::New(env, kMaxQueueDepth));
  exports.Set("maxIoBytes", Napi::Number::New(env, static_cast<double>(kMaxIoBytes)));
  return exports;
}

}  // namespace cistern

// The registration macro pastes the name into an identifier, so it must be unqualified.
static Napi::Object InitCisternEngine(Napi::Env env, Napi::Object exports) {
  return cistern::Init(env, exports);
}

NODE_API_MODULE(cistern_engine, InitCisternEngine)

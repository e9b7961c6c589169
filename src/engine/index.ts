// The I/O engine's public surface: direct-I/O block devices on kernel AIO, and the
// aligned buffers they need.

export { AioDevice, openDevice } from './aio-device';
export type { IoCallback, OpenDeviceOptions } from './aio-device';
export { BufferPool, addressAlignment, allocAligned } from './buffer-pool';
export type { BufferPoolOptions } from './buffer-pool';
export { liveEngines } from './native';
export * from './limits';

# Builds the native I/O engine (native/) into build/Release/cistern_engine.node.
# Kernel AIO is reached through raw syscalls and <linux/aio_abi.h>, so nothing beyond
# the kernel headers and node-addon-api is needed at build time (no libaio).
{
  'targets': [
    {
      'target_name': 'cistern_engine',
      'sources': [
        'native/addon.cc',
        'native/engine.cc',
        'native/probe.cc',
        'native/blocking.cc',
        'native/buffers.cc',
      ],
      'dependencies': ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      'defines': ['NAPI_VERSION=8', '_GNU_SOURCE'],
      'cflags_cc': ['-std=c++17', '-Wall', '-Wextra', '-O2'],
      'conditions': [
        ["OS!='linux'", {'type': 'none'}],
      ],
    },
  ],
}

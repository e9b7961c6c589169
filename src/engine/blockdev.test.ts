// Proves the engine on real block devices (loop devices over a scratch file): the
// alignment comes from BLKSSZGET (512 and 4096-byte sectors), the size from
// BLKGETSIZE64, and data, punch hole and zero range behave as on files. Needs root and
// losetup; skipped otherwise.

import * as assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { openDevice } from './aio-device';
import { fillPattern, isZero, matchesPattern, withScratchDir } from './testing';

const MiB = 2 ** 20;

function canUseLoopDevices(): boolean {
  if (process.getuid?.() !== 0 || !fs.existsSync('/dev/loop-control')) return false;
  return spawnSync('losetup', ['--version'], { stdio: 'ignore' }).status === 0;
}

async function withLoopDevice(
  sectorBytes: number,
  body: (device: string) => Promise<void>,
): Promise<void> {
  await withScratchDir(async (directory) => {
    const backing = path.join(directory, 'backing');
    fs.writeFileSync(backing, '');
    fs.truncateSync(backing, 32 * MiB);
    const loop = execFileSync(
      'losetup',
      ['--find', '--show', '--sector-size', String(sectorBytes), backing],
      { encoding: 'utf8' },
    ).trim();
    try {
      await body(loop);
    } finally {
      execFileSync('losetup', ['--detach', loop]);
    }
  });
}

for (const sectorBytes of [512, 4096]) {
  test(
    `a loop device with ${sectorBytes}-byte sectors: alignment, size, data, punch, zero`,
    { skip: !canUseLoopDevices() && 'needs root and losetup' },
    async () => {
      await withLoopDevice(sectorBytes, async (loop) => {
        const device = await openDevice(loop);
        assert.equal(device.isBlockDevice, true);
        assert.equal(device.alignmentSource, 'BLKSSZGET');
        assert.equal(device.alignment, sectorBytes);
        assert.equal(device.size, 32 * MiB);
        const data = device.allocate(MiB);
        fillPattern(data, sectorBytes);
        await device.write(data, 4 * MiB, { fua: true });
        await device.flush();
        const readBack = device.allocate(MiB);
        await device.read(readBack, 4 * MiB);
        assert.ok(matchesPattern(readBack, sectorBytes), 'data did not round-trip');
        await device.punchHole(4 * MiB, 64 * 1024);
        await device.zeroRange(4 * MiB + 128 * 1024, 64 * 1024);
        await device.read(readBack, 4 * MiB);
        assert.ok(isZero(readBack.subarray(0, 64 * 1024)), 'punched range not zero');
        assert.ok(!isZero(readBack.subarray(64 * 1024, 128 * 1024)), 'punch spilled');
        assert.ok(isZero(readBack.subarray(128 * 1024, 192 * 1024)), 'zeroed range not zero');
        assert.ok(!isZero(readBack.subarray(192 * 1024)), 'zero spilled');
        await device.close();
      });
    },
  );
}

// Proves a real filesystem lives on an export: nbdfuse exposes it as a file, mkfs.ext4
// formats it, the kernel mounts it through a loop device, files are written and read
// back, and after unmounting (and the loop device letting go of the file) e2fsck -fn
// finds it clean (so every write, flush and discard the kernel sent landed where it
// belongs). Runs against the memory provider (serve-memory.js) and the real daemon
// (`cistern daemon` on file-backed disks); the server is always in a process of its
// own, because this test blocks in filesystem calls that the server must answer.

import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { killDaemons } from '../daemon/helpers';
import { BACKENDS, serveBackendProcess, type BackendProcess } from './backends';
import { MiB, randomBytes, run, tempDir } from './helpers';

const VOLUME_BYTES = 256 * MiB;

after(() => killDaemons());

for (const backend of BACKENDS) {
  describe(`ext4 over nbdfuse on the ${backend} backend`, () => {
    let server: BackendProcess;
    let dir: string;

    before(async () => {
      dir = tempDir('fs');
      server = await serveBackendProcess(backend, [{ name: 'fs', sizeBytes: VOLUME_BYTES }]);
    });

    after(async () => {
      try {
        await server.stop();
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    test('mkfs.ext4, mount, write files, umount, e2fsck -fn is clean', async () => {
      const fuseDir = path.join(dir, 'fuse');
      const mountDir = path.join(dir, 'mnt');
      fs.mkdirSync(fuseDir);
      fs.mkdirSync(mountDir);
      const disk = path.join(fuseDir, 'disk');
      const fuse = spawn('nbdfuse', [disk, server.uri('fs')], { stdio: 'inherit' });
      const fuseExit = new Promise<number | null>((resolve) =>
        fuse.on('exit', (code) => resolve(code)),
      );
      let mounted = false;
      try {
        await waitFor(() => fs.existsSync(disk) && fs.statSync(disk).size === VOLUME_BYTES, 10_000);
        await run('mkfs.ext4', ['-q', '-F', disk]);
        await run('mount', ['-o', 'loop', disk, mountDir]);
        mounted = true;
        const files = new Map<string, Buffer>();
        for (let index = 0; index < 8; index += 1) {
          files.set(`file-${index}`, randomBytes(256 * 1024 + index * 4099, 100 + index));
        }
        for (const [name, data] of files) fs.writeFileSync(path.join(mountDir, name), data);
        fs.rmSync(path.join(mountDir, 'file-0')); // a delete, so the kernel may discard too
        files.delete('file-0');
        await run('sync', []);
        await run('umount', [mountDir]);
        mounted = false;
        // umount returns while the loop device may still hold the file, its last writes
        // (the superblock that marks the journal clean) not yet sent: e2fsck then read the
        // superblock as of the mount (a flake under load). Once the kernel has let go of
        // the file, everything it wrote has reached the export.
        await waitForLoopRelease(disk);
        const { stdout } = await run('e2fsck', ['-fn', disk]);
        assert.match(stdout, /18\/\d+ files/); // 11 reserved inodes + lost+found... + 7 files
        // Mount again read-only: the files must have survived the trip through the export.
        await run('mount', ['-o', 'loop,ro', disk, mountDir]);
        mounted = true;
        for (const [name, data] of files) {
          assert.ok(fs.readFileSync(path.join(mountDir, name)).equals(data), `${name} differs`);
        }
      } finally {
        if (mounted) await run('umount', [mountDir]);
        await run('fusermount3', ['-u', fuseDir]).catch(() => fuse.kill());
        await fuseExit;
      }
    });
  });
}

/** Bounds the kernel's release of a loop device after umount: milliseconds when idle. */
const LOOP_RELEASE_TIMEOUT_MS = 30_000;
const LOOP_POLL_MS = 50;

/** Waits until no loop device is backed by `file` (`losetup -j` lists none). */
async function waitForLoopRelease(file: string): Promise<void> {
  const deadline = Date.now() + LOOP_RELEASE_TIMEOUT_MS;
  for (;;) {
    const { stdout } = await run('losetup', ['-j', file]);
    if (stdout.trim() === '') return;
    if (Date.now() > deadline) {
      throw new Error(`the loop device still holds ${file}: ${stdout.trim()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, LOOP_POLL_MS));
  }
}

async function waitFor(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for nbdfuse');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

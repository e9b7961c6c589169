// Proves the iSCSI target survives hostile input: hundreds of connections send random
// bytes, mutated login sequences (random keys and values, CHAP garbage, bad stages and
// flags, bit flips, truncation, continuation abuse) and, after a valid login, random and
// mutated full-feature PDUs (every opcode, random flags, tags, sequence numbers, lengths,
// CDBs, Data-Out offsets, task management functions, text keys, AHS bytes, with digests
// on or off). Throughout, a healthy session of our own keeps writing and reading back its
// own volume and must see exactly its data; afterwards the server has reported no
// unexpected error, holds no connection, and serves a new session. A failure replays
// with ISCSI_FUZZ_SEED.

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import * as P from '../../src/frontend/iscsi/pdu';
import { ScsiStatus } from '../../src/frontend/iscsi/scsi-task';
import { createLogicalUnit } from '../../src/frontend/iscsi/scsi/logical-unit';
import { encodeText, type TextPairs } from '../../src/frontend/iscsi/text';
import { Random } from '../../src/util/random';
import { MiB, serveTarget, type ServedTarget } from './helpers';
import { inquiry, read10, TestInitiator, write10 } from './initiator';

const SEED = Number(process.env.ISCSI_FUZZ_SEED ?? 20_261_126);
const CONNECTIONS = 300;
const CONCURRENCY = 12;
/** How long a fuzz connection lives before we drop it (the server may be waiting for bytes). */
const CONNECTION_LIFETIME_MS = 120;
const FUZZ_TARGET = 'iqn.2026-11.io.cistern:fuzz';
const HEALTHY_TARGET = 'iqn.2026-11.io.cistern:healthy';

let target: ServedTarget;

before(async () => {
  target = await serveTarget(
    [
      { name: 'fuzz', sizeBytes: 4 * MiB },
      { name: 'healthy', sizeBytes: 4 * MiB },
    ],
    { createLogicalUnit, loginTimeoutMs: 1000, shutdownGraceMs: 1000 },
  );
  target.access.rules.set('healthy', {
    allowedInitiators: ['iqn.2026-11.io.cistern.test:healthy'],
  });
});

after(async () => {
  await target.close();
});

test(`${CONNECTIONS} hostile connections (seed ${SEED}) never disturb a healthy session`, async () => {
  const random = new Random(SEED);
  const healthy = runHealthySession();
  let next = 0;
  let fullFeature = 0;
  const worker = async (): Promise<void> => {
    while (next < CONNECTIONS) {
      next += 1;
      if (await fuzzOneConnection(new Random(random.u32()))) fullFeature += 1;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  assert.ok(
    fullFeature > CONNECTIONS / 5,
    `only ${fullFeature} connections reached full feature phase`,
  );
  const healthyRounds = await healthy.stop();
  assert.ok(healthyRounds > 20, `the healthy session completed only ${healthyRounds} rounds`);
  assert.deepEqual(target.unexpectedErrors, []);
  await waitUntil(
    () => target.server.connectionCount === 0,
    5000,
    () => target.server.describeConnections().join('\n'),
  );

  const fresh = await TestInitiator.connect(target.port);
  assert.equal((await fresh.login({ targetName: FUZZ_TARGET })).statusClass, 0);
  await fresh.command(Buffer.alloc(6), {}); // the UNIT ATTENTION of a new nexus
  const blockBytes = await blockSize(fresh);
  const data = Buffer.alloc(blockBytes, 0x42);
  assert.equal((await fresh.command(write10(0, 1), { write: data })).status, ScsiStatus.GOOD);
  assert.ok((await fresh.command(read10(0, 1), { read: blockBytes })).data.equals(data));
  fresh.close();
});

function runHealthySession(): { stop(): Promise<number> } {
  let stopping = false;
  let rounds = 0;
  const done = (async () => {
    const initiator = await TestInitiator.connect(target.port);
    const login = await initiator.login({
      targetName: HEALTHY_TARGET,
      initiatorName: 'iqn.2026-11.io.cistern.test:healthy',
      keys: [['InitialR2T', 'No']],
    });
    assert.equal(
      login.statusClass,
      0,
      `healthy login refused: ${login.statusClass}/${login.statusDetail}`,
    );
    // A new I_T nexus first hears of the power-on (UNIT ATTENTION); take it before the loop.
    await initiator.command(inquiry(36), { read: 36 });
    await initiator.command(Buffer.alloc(6), {});
    const blockBytes = await blockSize(initiator);
    const volumeBlocks = (4 * MiB) / blockBytes;
    const random = new Random(SEED ^ 0x5a5a);
    while (!stopping) {
      const lba = random.int(volumeBlocks - 8);
      const data = Buffer.alloc(blockBytes * random.range(1, 8));
      for (let i = 0; i < data.length; i += 1) data[i] = random.int(256);
      const blocks = data.length / blockBytes;
      const written = await initiator.command(write10(lba, blocks), {
        write: data,
        immediateBytes: 512,
        unsolicitedBytes: Math.min(data.length, 2048),
      });
      assert.equal(
        written.status,
        ScsiStatus.GOOD,
        `healthy write failed, sense ${written.sense?.toString('hex')}`,
      );
      const read = await initiator.command(read10(lba, blocks), { read: data.length });
      assert.equal(read.status, ScsiStatus.GOOD);
      assert.ok(read.data.equals(data), 'the healthy session read back other data');
      rounds += 1;
    }
    await initiator.logout();
    initiator.close();
  })();
  return {
    stop: async () => {
      stopping = true;
      await done;
      return rounds;
    },
  };
}

/** One hostile connection; true if it reached the full feature phase before the mischief. */
async function fuzzOneConnection(random: Random): Promise<boolean> {
  const initiator = await TestInitiator.connect(target.port);
  let reachedFullFeature = false;
  try {
    const mode = random.int(10);
    if (mode === 0) {
      initiator.writeRaw(randomBytes(random, random.int(4096)));
    } else if (mode <= 3) {
      fuzzLogin(initiator, random);
    } else {
      const keys: TextPairs = [];
      if (random.bool()) keys.push(['HeaderDigest', 'CRC32C']);
      if (random.bool()) keys.push(['DataDigest', 'CRC32C']);
      if (random.bool()) keys.push(['InitialR2T', 'No']);
      if (random.bool()) keys.push(['MaxRecvDataSegmentLength', String(random.range(512, 65536))]);
      const isid = Buffer.from([0x80, 0, 0, 0, 0, 0]);
      isid.writeUInt32BE(random.u32(), 2);
      const login = await initiator.login({
        targetName: random.bool(0.9) ? FUZZ_TARGET : HEALTHY_TARGET,
        keys,
        isid,
      });
      if (login.statusClass === 0) {
        reachedFullFeature = true;
        const count = random.range(1, 30);
        for (let i = 0; i < count && !initiator.closed; i += 1)
          sendFullFeatureMischief(initiator, random);
      }
    }
    await sleep(random.int(CONNECTION_LIFETIME_MS));
  } finally {
    initiator.close();
  }
  return reachedFullFeature;
}

function fuzzLogin(initiator: TestInitiator, random: Random): void {
  const isid = randomBytes(random, 6);
  const rounds = random.range(1, 5);
  for (let round = 0; round < rounds; round += 1) {
    const pairs: TextPairs = [];
    const candidates: Array<() => [string, string]> = [
      () => [
        'InitiatorName',
        random.bool(0.8) ? 'iqn.2026-11.io.cistern.test:fuzz' : randomText(random),
      ],
      () => ['TargetName', random.bool(0.7) ? FUZZ_TARGET : randomText(random)],
      () => ['SessionType', random.pick(['Normal', 'Discovery', randomText(random)])],
      () => ['AuthMethod', random.pick(['None', 'CHAP', 'CHAP,None', 'SRP', ''])],
      () => ['CHAP_A', random.pick(['5', '7', 'x'])],
      () => ['CHAP_N', randomText(random)],
      () => [
        'CHAP_R',
        random.pick([
          '0x',
          '0b',
          '0xzz',
          `0x${randomBytes(random, random.int(40)).toString('hex')}`,
        ]),
      ],
      () => ['CHAP_I', String(random.int(300) - 20)],
      () => ['CHAP_C', `0b${randomBytes(random, random.int(2000)).toString('base64')}`],
      () => [
        random.pick([
          'MaxBurstLength',
          'FirstBurstLength',
          'MaxRecvDataSegmentLength',
          'MaxOutstandingR2T',
        ]),
        String(random.u32()),
      ],
      () => [
        random.pick(['HeaderDigest', 'DataDigest']),
        random.pick(['CRC32C', 'None', 'CRC32C,None', 'bogus']),
      ],
      () => [randomText(random).replace(/=/g, ''), randomText(random)],
    ];
    const keyCount = random.int(8);
    for (let i = 0; i < keyCount; i += 1) pairs.push(random.pick(candidates)());
    let data: Buffer = encodeText(pairs.filter(([key]) => key.length > 0));
    if (random.bool(0.2)) data = mutate(random, data);
    const bhs = initiator.loginPdu({
      transit: random.bool(),
      continue: random.bool(0.15),
      csg: random.int(4),
      nsg: random.int(4),
      isid,
      tsih: random.bool(0.9) ? 0 : random.int(65536),
      itt: random.u32(),
      versionMin: random.bool(0.95) ? 0 : random.int(256),
    });
    const parts = P.framePdu(random.bool(0.2) ? mutate(random, bhs, false) : bhs, data, {
      header: false,
      data: false,
    });
    const wire = Buffer.concat(parts);
    initiator.writeRaw(random.bool(0.1) ? wire.subarray(0, random.int(wire.length)) : wire);
  }
}

function sendFullFeatureMischief(initiator: TestInitiator, random: Random): void {
  const bhs = Buffer.alloc(P.BHS_BYTES);
  const opcode = random.pick([
    P.Opcode.SCSI_COMMAND,
    P.Opcode.SCSI_COMMAND,
    P.Opcode.DATA_OUT,
    P.Opcode.NOP_OUT,
    P.Opcode.TASK_MANAGEMENT,
    P.Opcode.TEXT,
    P.Opcode.LOGOUT,
    P.Opcode.SNACK,
    P.Opcode.LOGIN,
    random.int(64),
  ]);
  bhs[0] = opcode | (random.bool() ? 0x40 : 0);
  bhs[1] = random.int(256);
  const lun = random.bool(0.8) ? 0 : random.int(0x4000);
  P.encodeLun(lun, bhs);
  bhs.writeUInt32BE(random.bool(0.7) ? random.int(64) : random.u32(), 16); // ITT
  bhs.writeUInt32BE(random.bool(0.5) ? random.int(64) : random.u32(), 20); // EDTL / TTT / RTT
  // CmdSN mostly in the window, sometimes anywhere.
  bhs.writeUInt32BE(random.bool(0.8) ? (initiator.cmdSN + random.int(4)) >>> 0 : random.u32(), 24);
  initiator.cmdSN += 1;
  bhs.writeUInt32BE(random.u32(), 28);
  bhs.writeUInt32BE(random.bool() ? random.int(8) : random.u32(), 36);
  bhs.writeUInt32BE(random.bool() ? random.int(65536) : random.u32(), 40);
  if (opcode === P.Opcode.SCSI_COMMAND) {
    const cdb = random.bool(0.5)
      ? random.pick([
          inquiry(random.int(300)),
          read10(random.int(10000), random.int(64)),
          write10(random.int(10000), random.int(64)),
        ])
      : randomBytes(random, 16);
    cdb.copy(bhs, 32);
    bhs.writeUInt32BE(random.bool(0.8) ? random.int(64 * 1024) : random.u32(), 20);
  } else {
    randomBytes(random, 12).copy(bhs, 32);
  }
  let ahs: Buffer = Buffer.alloc(0);
  if (random.bool(0.1)) {
    ahs = randomBytes(random, 4 * random.range(1, 4));
    bhs[4] = ahs.length / 4;
  }
  const dataLength = random.bool(0.6) ? 0 : random.int(random.bool(0.9) ? 2048 : 300_000);
  const data =
    opcode === P.Opcode.TEXT && random.bool()
      ? encodeText([['SendTargets', random.pick(['All', '', FUZZ_TARGET])]])
      : randomBytes(random, dataLength);
  const parts = P.framePdu(bhs, data, initiator.digests);
  if (ahs.length > 0) parts.splice(1, 0, ahs);
  let wire: Buffer = Buffer.concat(parts);
  if (random.bool(0.1)) wire = mutate(random, wire);
  initiator.writeRaw(wire);
}

/** The logical block size, from READ CAPACITY(10). */
async function blockSize(initiator: TestInitiator): Promise<number> {
  const capacity = await initiator.command(Buffer.from([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]), {
    read: 8,
  });
  assert.equal(capacity.status, ScsiStatus.GOOD);
  return capacity.data.readUInt32BE(4);
}

function mutate(random: Random, bytes: Buffer, truncate = true): Buffer {
  const copy = Buffer.from(bytes);
  const flips = random.range(1, 4);
  for (let i = 0; i < flips && copy.length > 0; i += 1) {
    const at = random.int(copy.length);
    copy[at] = (copy[at] as number) ^ (1 << random.int(8));
  }
  return truncate && random.bool(0.2) ? copy.subarray(0, random.int(copy.length + 1)) : copy;
}

function randomBytes(random: Random, count: number): Buffer {
  const bytes = Buffer.alloc(count);
  for (let i = 0; i < count; i += 1) bytes[i] = random.int(256);
  return bytes;
}

function randomText(random: Random): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789.:-=_,';
  let text = '';
  const length = random.int(80);
  for (let i = 0; i < length; i += 1) text += alphabet[random.int(alphabet.length)];
  return text;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitUntil(
  condition: () => boolean,
  timeoutMs: number,
  explain: () => string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    assert.ok(Date.now() < deadline, `condition not reached in time: ${explain()}`);
    await sleep(10);
  }
}

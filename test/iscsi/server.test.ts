// The iSCSI transport against a test initiator that speaks raw PDUs: discovery, login
// (keys, CHAP one-way and mutual, access lists, unknown targets), SCSI commands with
// every way of moving write data (immediate, unsolicited, R2T), Data-In split by the
// initiator's MaxRecvDataSegmentLength with the status in the last one, residuals, the
// CmdSN window, digests, NOP, task management, logout, session reinstatement, and
// Rejects for malformed PDUs with the connection (or at least the server) carrying on.
// The logical unit is the transport's stub (test/iscsi/stub-unit.ts); real clients with
// the real command set are in the other files of this folder.

import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import * as P from '../../src/frontend/iscsi/pdu';
import { ScsiStatus } from '../../src/frontend/iscsi/scsi-task';
import { MiB, serveTarget, type ServedTarget } from './helpers';
import { DEFAULT_INITIATOR, inquiry, read10, TestInitiator, write10 } from './initiator';

const VOLUME = 'vol';
const TARGET = 'iqn.2026-11.io.cistern:vol';

let target: ServedTarget;

before(async () => {
  target = await serveTarget([
    { name: VOLUME, sizeBytes: 16 * MiB },
    { name: 'Secret_Vol', sizeBytes: 1 * MiB },
    { name: 'chapvol', sizeBytes: 1 * MiB },
  ]);
  target.access.rules.set('Secret_Vol', {
    allowedInitiators: ['iqn.2026-11.io.cistern.test:allowed'],
  });
  target.access.rules.set('chapvol', {
    allowedInitiators: [],
    chap: {
      user: 'alice',
      secret: 'alice-secret-16b',
      mutualUser: 'target',
      mutualSecret: 'target-secret-16',
    },
  });
});

after(async () => {
  await target.close();
});

async function loggedIn(keys: Array<[string, string]> = []): Promise<TestInitiator> {
  const initiator = await TestInitiator.connect(target.port);
  const result = await initiator.login({ targetName: TARGET, keys, isid: randomIsid() });
  assert.equal(result.statusClass, 0, `login failed ${result.statusClass}/${result.statusDetail}`);
  return initiator;
}

let isidCounter = 1;
function randomIsid(): Buffer {
  const isid = Buffer.from([0x80, 0, 0, 0, 0, 0]);
  isid.writeUInt32BE(isidCounter, 2);
  isidCounter += 1;
  return isid;
}

function pattern(bytes: number, seed: number): Buffer {
  const data = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 1) data[i] = (i * 31 + seed) & 0xff;
  return data;
}

describe('discovery', () => {
  test('SendTargets=All lists each volume the initiator may see, at the address it connected to, with the TPGT', async () => {
    const initiator = await TestInitiator.connect(target.port);
    const login = await initiator.login({ discovery: true });
    assert.equal(login.statusClass, 0);
    const pairs = await initiator.sendTargets('All');
    const names = pairs.filter(([key]) => key === 'TargetName').map(([, value]) => value);
    assert.deepEqual(names.sort(), ['iqn.2026-11.io.cistern:chapvol', TARGET]);
    assert.ok(
      pairs.some(
        ([key, value]) => key === 'TargetAddress' && value === `127.0.0.1:${target.port},1`,
      ),
    );
    initiator.close();

    const allowed = await TestInitiator.connect(target.port);
    await allowed.login({ discovery: true, initiatorName: 'iqn.2026-11.io.cistern.test:allowed' });
    const visible = (await allowed.sendTargets('All')).filter(([key]) => key === 'TargetName');
    assert.ok(visible.some(([, value]) => value === 'iqn.2026-11.io.cistern:secret_vol'));
    allowed.close();
  });

  test('a long SendTargets answer continues over several Text Responses (C bit, TTT)', async () => {
    for (let i = 0; i < 40; i += 1)
      target.provider.create(`many-volumes-with-long-names-${i}`, MiB);
    try {
      const initiator = await TestInitiator.connect(target.port);
      await initiator.login({ discovery: true, keys: [['MaxRecvDataSegmentLength', '512']] });
      const names = (await initiator.sendTargets('All')).filter(([key]) => key === 'TargetName');
      assert.equal(names.length, 42);
      initiator.close();
    } finally {
      for (let i = 0; i < 40; i += 1) target.provider.delete(`many-volumes-with-long-names-${i}`);
    }
  });
});

describe('login', () => {
  test('an unknown target is refused with 0x0203 (not found)', async () => {
    const initiator = await TestInitiator.connect(target.port);
    const result = await initiator.login({ targetName: 'iqn.2026-11.io.cistern:nope' });
    assert.deepEqual([result.statusClass, result.statusDetail], [2, 3]);
    assert.ok(await initiator.waitClosed());
  });

  test('target names match volumes case-insensitively', async () => {
    const initiator = await TestInitiator.connect(target.port);
    const result = await initiator.login({
      targetName: 'IQN.2026-11.io.cistern:SECRET_VOL',
      initiatorName: 'iqn.2026-11.io.cistern.test:ALLOWED',
    });
    assert.equal(result.statusClass, 0);
    initiator.close();
  });

  test('an initiator outside the access list is refused with 0x0202', async () => {
    const initiator = await TestInitiator.connect(target.port);
    const result = await initiator.login({ targetName: 'iqn.2026-11.io.cistern:secret_vol' });
    assert.deepEqual([result.statusClass, result.statusDetail], [2, 2]);
  });

  test('CHAP: the right secret logs in, mutual CHAP proves the target, a wrong secret gets 0x0201', async () => {
    const good = await TestInitiator.connect(target.port);
    const ok = await good.login({
      targetName: 'iqn.2026-11.io.cistern:chapvol',
      chap: {
        user: 'alice',
        secret: 'alice-secret-16b',
        mutual: { user: 'target', secret: 'target-secret-16' },
      },
    });
    assert.equal(ok.statusClass, 0);
    assert.equal(ok.keys.get('AuthMethod'), 'CHAP');
    const answer = await good.command(inquiry(36), { read: 36 });
    assert.equal(answer.status, ScsiStatus.GOOD);
    good.close();

    const bad = await TestInitiator.connect(target.port);
    const refused = await bad.login({
      targetName: 'iqn.2026-11.io.cistern:chapvol',
      chap: { user: 'alice', secret: 'wrong-secret-16b' },
    });
    assert.deepEqual([refused.statusClass, refused.statusDetail], [2, 1]);

    const none = await TestInitiator.connect(target.port);
    const noChap = await none.login({ targetName: 'iqn.2026-11.io.cistern:chapvol' });
    assert.deepEqual([noChap.statusClass, noChap.statusDetail], [2, 1]);
  });

  test('operational keys are negotiated by their RFC 7143 rules', async () => {
    const initiator = await TestInitiator.connect(target.port);
    const result = await initiator.login({
      targetName: TARGET,
      isid: randomIsid(),
      keys: [
        ['HeaderDigest', 'CRC32C,None'],
        ['DataDigest', 'None'],
        ['InitialR2T', 'No'],
        ['ImmediateData', 'Yes'],
        ['MaxBurstLength', '16776192'],
        ['FirstBurstLength', '262144'],
        ['MaxOutstandingR2T', '1'],
        ['ErrorRecoveryLevel', '2'],
        ['MaxConnections', '8'],
        ['X-com.example.unknown', 'yes'],
      ],
    });
    assert.equal(result.statusClass, 0);
    assert.equal(result.keys.get('HeaderDigest'), 'CRC32C');
    assert.equal(result.keys.get('DataDigest'), 'None');
    assert.equal(result.keys.get('InitialR2T'), 'No');
    assert.equal(result.keys.get('ErrorRecoveryLevel'), '0');
    assert.equal(result.keys.get('MaxConnections'), '1');
    assert.equal(result.keys.get('MaxBurstLength'), String(MiB));
    assert.equal(result.keys.get('X-com.example.unknown'), 'NotUnderstood');
    assert.equal(result.keys.get('TargetPortalGroupTag'), '1');
    assert.equal(result.keys.get('MaxRecvDataSegmentLength'), String(256 * 1024));
    // With the header digest on, commands still work.
    const answer = await initiator.command(inquiry(36), { read: 36 });
    assert.equal(answer.status, ScsiStatus.GOOD);
    initiator.close();
  });

  test('a second login with the same initiator name and ISID replaces the first session', async () => {
    const isid = randomIsid();
    const first = await TestInitiator.connect(target.port);
    assert.equal((await first.login({ targetName: TARGET, isid })).statusClass, 0);
    const second = await TestInitiator.connect(target.port);
    assert.equal((await second.login({ targetName: TARGET, isid })).statusClass, 0);
    assert.ok(await first.waitClosed(), 'the old session was not closed');
    assert.equal((await second.command(inquiry(36), { read: 36 })).status, ScsiStatus.GOOD);
    second.close();
  });
});

describe('SCSI commands', () => {
  test('writes move through immediate data and R2Ts; reads come back in Data-In PDUs with the status in the last', async () => {
    const initiator = await loggedIn([['MaxRecvDataSegmentLength', '4096']]);
    const data = pattern(300 * 1024, 1);
    const blocks = data.length / 512;
    const written = await initiator.command(write10(8, blocks), {
      write: data,
      immediateBytes: 8192,
      segmentBytes: 65536,
    });
    assert.equal(written.status, ScsiStatus.GOOD);
    assert.ok(written.r2tCount >= 1, 'no R2T for the data beyond the immediate part');
    const read = await initiator.command(read10(8, blocks), { read: data.length });
    assert.equal(read.status, ScsiStatus.GOOD);
    assert.ok(read.data.equals(data), 'read back differs');
    assert.equal(read.response, undefined, 'status should ride on the last Data-In');
    assert.equal(read.dataInCount, data.length / 4096);
    initiator.close();
  });

  test('unsolicited Data-Out (InitialR2T=No) up to FirstBurstLength, R2Ts for the rest', async () => {
    const initiator = await loggedIn([
      ['InitialR2T', 'No'],
      ['FirstBurstLength', '65536'],
      ['MaxBurstLength', '131072'],
    ]);
    const data = pattern(512 * 1024, 2);
    const written = await initiator.command(write10(2048, data.length / 512), {
      write: data,
      immediateBytes: 4096,
      unsolicitedBytes: 65536,
    });
    assert.equal(written.status, ScsiStatus.GOOD);
    assert.equal(written.r2tCount, Math.ceil((data.length - 65536) / 131072));
    const read = await initiator.command(read10(2048, data.length / 512), { read: data.length });
    assert.ok(read.data.equals(data));
    initiator.close();
  });

  test('residuals: a short allocation is an underflow, a short ExpectedDataTransferLength an overflow', async () => {
    const initiator = await loggedIn();
    const under = await initiator.command(inquiry(36), { read: 100 });
    assert.equal(under.data.length, 36);
    assert.deepEqual([under.residualFlags.underflow, under.residual], [true, 64]);
    const over = await initiator.command(read10(0, 2), { read: 512 });
    assert.equal(over.data.length, 512);
    assert.deepEqual([over.residualFlags.overflow, over.residual], [true, 512]);
    const writeOver = await initiator.command(write10(0, 2), { write: Buffer.alloc(512) });
    assert.deepEqual([writeOver.residualFlags.overflow, writeOver.residual], [true, 512]);
    initiator.close();
  });

  test('CHECK CONDITION comes in a SCSI Response with its sense data', async () => {
    const initiator = await loggedIn();
    const answer = await initiator.command(read10(1 << 30, 1), { read: 512 });
    assert.equal(answer.status, ScsiStatus.CHECK_CONDITION);
    assert.equal(answer.response, 0);
    assert.equal((answer.sense?.[2] ?? 0) & 0x0f, 0x05);
    initiator.close();
  });

  test('a command beyond the CmdSN window is dropped silently; the next in-window one is answered', async () => {
    const initiator = await loggedIn();
    const first = await initiator.command(inquiry(36), { read: 36 });
    const tooHigh = initiator.commandPdu(Buffer.from([0, 0, 0, 0, 0, 0]), {
      read: false,
      write: false,
      final: true,
      expectedLength: 0,
      cmdSN: initiator.cmdSN + 1000,
      itt: initiator.itt(),
    });
    initiator.send(tooHigh);
    assert.equal(await initiator.receive(300), undefined, 'an out-of-window command was answered');
    const second = await initiator.command(inquiry(36), { read: 36 });
    assert.equal(second.status, ScsiStatus.GOOD);
    assert.equal(second.statSN, (first.statSN + 1) >>> 0);
    initiator.close();
  });

  test('Data-Out with a wrong DataSN fails the command with CHECK CONDITION, and the session goes on', async () => {
    const initiator = await loggedIn([['ImmediateData', 'No']]);
    const answer = await initiator.command(write10(0, 4), {
      write: Buffer.alloc(2048),
      segmentBytes: 512,
      mangleDataOut: (bhs, index) => {
        if (index === 1) bhs.writeUInt32BE(27, 36);
      },
    });
    assert.equal(answer.status, ScsiStatus.CHECK_CONDITION);
    assert.equal((answer.sense?.[2] ?? 0) & 0x0f, 0x0b);
    assert.equal((await initiator.command(inquiry(36), { read: 36 })).status, ScsiStatus.GOOD);
    initiator.close();
  });

  test('data digests: a corrupted Data-Out is rejected and its command fails; good ones pass', async () => {
    const initiator = await loggedIn([
      ['DataDigest', 'CRC32C'],
      ['HeaderDigest', 'CRC32C'],
      ['ImmediateData', 'No'],
    ]);
    const data = pattern(4096, 3);
    assert.equal(
      (await initiator.command(write10(64, 8), { write: data })).status,
      ScsiStatus.GOOD,
    );
    assert.ok((await initiator.command(read10(64, 8), { read: 4096 })).data.equals(data));
    // Corrupt the data digest of the Data-Out by sending a raw PDU with a bad trailer.
    const itt = initiator.itt();
    initiator.send(
      initiator.commandPdu(write10(64, 1), {
        read: false,
        write: true,
        final: true,
        expectedLength: 512,
        itt,
      }),
    );
    initiator.cmdSN += 1;
    const r2t = await initiator.expect(P.Opcode.R2T);
    const out = initiator.dataOutPdu({
      final: true,
      itt,
      ttt: r2t.bhs.readUInt32BE(20),
      dataSN: 0,
      offset: 0,
    });
    const parts = P.framePdu(out, Buffer.alloc(512, 1), initiator.digests);
    const digest = parts[parts.length - 1] as Buffer;
    digest[0] = (digest[0] as number) ^ 0xff;
    for (const part of parts) initiator.writeRaw(part);
    const reject = await initiator.expect(P.Opcode.REJECT);
    assert.equal(reject.bhs[2], P.RejectReason.DATA_DIGEST_ERROR);
    const response = await initiator.expect(P.Opcode.SCSI_RESPONSE);
    assert.equal(response.bhs[3], ScsiStatus.CHECK_CONDITION);
    initiator.close();
  });
});

describe('NOP, task management, logout, malformed PDUs', () => {
  test('NOP-Out ping is echoed in a NOP-In with its data', async () => {
    const initiator = await loggedIn();
    const itt = initiator.nopOut(Buffer.from('ping data'));
    const pong = await initiator.expect(P.Opcode.NOP_IN);
    assert.equal(pong.bhs.readUInt32BE(16), itt);
    assert.equal(pong.bhs.readUInt32BE(20), P.RESERVED_TAG);
    assert.equal(pong.data.toString(), 'ping data');
    initiator.close();
  });

  test('ABORT TASK ends a running command without its answer; an unknown tag is "task does not exist"', async () => {
    const initiator = await loggedIn();
    const unit = target.units.get(VOLUME);
    assert.ok(unit !== undefined);
    let open!: () => void;
    unit.gate = new Promise((resolve) => (open = resolve));
    const itt = initiator.itt();
    initiator.send(
      initiator.commandPdu(read10(0, 1), {
        read: true,
        write: false,
        final: true,
        expectedLength: 512,
        itt,
      }),
    );
    initiator.cmdSN += 1;
    await new Promise((resolve) => setTimeout(resolve, 50));
    initiator.taskManagement(P.TmfFunction.ABORT_TASK, { referencedTaskTag: itt });
    await new Promise((resolve) => setTimeout(resolve, 50));
    unit.gate = undefined;
    open();
    const response = await initiator.expect(P.Opcode.TASK_MANAGEMENT_RESPONSE);
    assert.equal(response.bhs[2], P.TmfResponse.FUNCTION_COMPLETE);
    initiator.taskManagement(P.TmfFunction.ABORT_TASK, { referencedTaskTag: 0x7777 });
    const missing = await initiator.expect(P.Opcode.TASK_MANAGEMENT_RESPONSE);
    assert.equal(missing.bhs[2], P.TmfResponse.TASK_DOES_NOT_EXIST);
    const resets = unit.resets.length;
    initiator.taskManagement(P.TmfFunction.LOGICAL_UNIT_RESET);
    assert.equal(
      (await initiator.expect(P.Opcode.TASK_MANAGEMENT_RESPONSE)).bhs[2],
      P.TmfResponse.FUNCTION_COMPLETE,
    );
    assert.equal(unit.resets.length, resets + 1);
    assert.equal((await initiator.command(inquiry(36), { read: 36 })).status, ScsiStatus.GOOD);
    initiator.close();
  });

  test('an ORDERED task waits for older tasks, and younger SIMPLE tasks wait for it; HEAD OF QUEUE does not wait', async () => {
    const initiator = await loggedIn();
    const unit = target.units.get(VOLUME);
    assert.ok(unit !== undefined);
    let open!: () => void;
    unit.gate = new Promise((resolve) => (open = resolve));
    const send = (attribute: number): number => {
      const itt = initiator.itt();
      initiator.send(
        initiator.commandPdu(Buffer.alloc(6), {
          read: false,
          write: false,
          final: true,
          expectedLength: 0,
          itt,
          attribute,
        }),
      );
      initiator.cmdSN += 1;
      return itt;
    };
    const before = unit.executed.length;
    const simple = send(P.TaskAttributeCode.SIMPLE);
    const ordered = send(P.TaskAttributeCode.ORDERED);
    const younger = send(P.TaskAttributeCode.SIMPLE);
    const urgent = send(P.TaskAttributeCode.HEAD_OF_QUEUE);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(
      unit.executed.slice(before).map((task) => task.tag),
      [simple, urgent],
      'only the SIMPLE task before the ORDERED one and the HEAD OF QUEUE task may run',
    );
    unit.gate = undefined;
    open();
    const answered: number[] = [];
    for (let i = 0; i < 4; i += 1)
      answered.push((await initiator.expect(P.Opcode.SCSI_RESPONSE)).bhs.readUInt32BE(16));
    assert.deepEqual(new Set(answered), new Set([simple, ordered, younger, urgent]));
    const order = unit.executed.slice(before).map((task) => task.tag);
    assert.ok(
      order.indexOf(ordered) < order.indexOf(younger),
      'a younger task ran before the ORDERED one',
    );
    initiator.close();
  });

  test('logout answers, closes the connection, and the last session closes the logical unit', async () => {
    const initiator = await TestInitiator.connect(target.port);
    const login = await initiator.login({
      targetName: 'iqn.2026-11.io.cistern:chapvol',
      chap: { user: 'alice', secret: 'alice-secret-16b' },
    });
    assert.equal(login.statusClass, 0);
    const unit = target.units.get('chapvol');
    assert.ok(unit !== undefined);
    const response = await initiator.logout();
    assert.equal(response.bhs[2], P.LogoutResponseCode.CLOSED);
    assert.ok(await initiator.waitClosed());
    for (let i = 0; i < 50 && !unit.closed; i += 1)
      await new Promise((resolve) => setTimeout(resolve, 10));
    assert.ok(unit.closed, 'logical unit still open after its last session');
    assert.equal(unit.nexusesLost.at(-1)?.nexus, `${DEFAULT_INITIATOR},i,0x800000123456`);
  });

  test('keepalive: a silent initiator is pinged with NOP-In and dropped if it stays silent; one that answers stays', async () => {
    const quick = await serveTarget([{ name: VOLUME, sizeBytes: MiB }], {
      keepaliveIntervalMs: 100,
      keepaliveTimeoutMs: 200,
    });
    try {
      const silent = await TestInitiator.connect(quick.port);
      assert.equal((await silent.login({ targetName: TARGET })).statusClass, 0);
      const answering = await TestInitiator.connect(quick.port);
      assert.equal(
        (await answering.login({ targetName: TARGET, isid: randomIsid() })).statusClass,
        0,
      );
      let answered = 0;
      let stop = false;
      const responder = (async () => {
        while (!stop) {
          const nop = await answering.receive(50);
          if (nop?.opcode !== P.Opcode.NOP_IN) continue;
          answering.nopReply(nop.bhs.readUInt32BE(20));
          answered += 1;
        }
      })();
      const ping = await silent.expect(P.Opcode.NOP_IN, 2000);
      assert.equal(ping.bhs.readUInt32BE(16), P.RESERVED_TAG);
      assert.notEqual(ping.bhs.readUInt32BE(20), P.RESERVED_TAG);
      assert.ok(await silent.waitClosed(3000), 'a silent initiator kept its connection');
      while (answered < 3) await new Promise((resolve) => setTimeout(resolve, 20));
      stop = true;
      await responder;
      assert.equal(answering.closed, false, 'an initiator that answered its pings was dropped');
      assert.equal((await answering.command(Buffer.alloc(6), {})).status, ScsiStatus.GOOD);
      answering.close();
    } finally {
      await quick.close();
    }
  });

  test('unknown opcodes and SNACK get a Reject and the connection goes on', async () => {
    const initiator = await loggedIn();
    const bogus = Buffer.alloc(P.BHS_BYTES);
    bogus[0] = 0x1c;
    initiator.send(bogus);
    const reject = await initiator.expect(P.Opcode.REJECT);
    assert.equal(reject.bhs[2], P.RejectReason.COMMAND_NOT_SUPPORTED);
    assert.ok(reject.data.equals(bogus));
    const snack = Buffer.alloc(P.BHS_BYTES);
    snack[0] = P.Opcode.SNACK;
    initiator.send(snack);
    assert.equal(
      (await initiator.expect(P.Opcode.REJECT)).bhs[2],
      P.RejectReason.COMMAND_NOT_SUPPORTED,
    );
    assert.equal((await initiator.command(inquiry(36), { read: 36 })).status, ScsiStatus.GOOD);
    initiator.close();
  });

  test('a data segment beyond our MaxRecvDataSegmentLength closes the connection; the server keeps serving', async () => {
    const initiator = await loggedIn();
    const huge = Buffer.alloc(P.BHS_BYTES);
    huge[0] = P.Opcode.NOP_OUT | 0x40;
    huge[5] = 0x10; // 1 MiB
    initiator.writeRaw(huge);
    assert.ok(await initiator.waitClosed());
    const next = await loggedIn();
    assert.equal((await next.command(inquiry(36), { read: 36 })).status, ScsiStatus.GOOD);
    next.close();
  });

  test('garbage instead of a login closes the connection', async () => {
    const initiator = await TestInitiator.connect(target.port);
    initiator.writeRaw(Buffer.alloc(96, 0xab));
    assert.ok(await initiator.waitClosed());
  });
});

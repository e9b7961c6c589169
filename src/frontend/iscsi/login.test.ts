// The login state machine on its own (no sockets): stage transitions and transit bits,
// key continuation over several PDUs (C bit), CHAP with hex and base64 values, mutual
// CHAP and its reflection guard, and the status each failure gets (RFC 7143 §11.13.5).

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import type { VolumeAccess } from './access';
import {
  chapResponse,
  LoginNegotiation,
  LoginStatuses,
  type LoginContext,
  type CompletedLogin,
} from './login';
import { Stage, type LoginRequestPdu } from './pdu';
import { encodeText, parseText } from './text';

const CHALLENGE = Buffer.alloc(16, 0x5a);

function context(access: VolumeAccess, admitted: CompletedLogin[] = []): LoginContext {
  return {
    limits: {
      maxRecvDataSegmentLength: 262144,
      maxBurstLength: 1048576,
      firstBurstLength: 262144,
      maxOutstandingR2T: 4,
    },
    portalGroupTag: 7,
    resolveTarget: async (name) =>
      name.toLowerCase() === 'iqn.2026-11.io.cistern:vol'
        ? { kind: 'found', volumeName: 'vol' }
        : { kind: 'not-found' },
    access: async () => access,
    admit: async (login) => {
      admitted.push(login);
      return { tsih: 42 };
    },
    randomBytes: (count) => (count === 1 ? Buffer.from([9]) : CHALLENGE.subarray(0, count)),
  };
}

function request(
  fields: Partial<LoginRequestPdu> & { pairs?: Array<[string, string]> },
): LoginRequestPdu {
  return {
    transit: false,
    continue: false,
    csg: Stage.SECURITY,
    nsg: 0,
    versionMax: 0,
    versionMin: 0,
    isid: Buffer.from('800000000001', 'hex'),
    tsih: 0,
    itt: 1,
    cid: 0,
    cmdSN: 1,
    expStatSN: 0,
    data: fields.data ?? encodeText(fields.pairs ?? []),
    ...fields,
  };
}

const FIRST: Array<[string, string]> = [
  ['InitiatorName', 'iqn.2026-11.example:Host'],
  ['TargetName', 'iqn.2026-11.io.cistern:vol'],
];

test('no authentication: security → operational → full feature, TSIH and TPGT in the answers', async () => {
  const admitted: CompletedLogin[] = [];
  const login = new LoginNegotiation(context({ allowedInitiators: [] }, admitted));
  const first = await login.handle(
    request({ transit: true, nsg: Stage.OPERATIONAL, pairs: [...FIRST, ['AuthMethod', 'None']] }),
  );
  assert.deepEqual([first.transit, first.nsg, first.next], [true, Stage.OPERATIONAL, 'continue']);
  assert.deepEqual(parseText(first.data), [
    ['TargetPortalGroupTag', '7'],
    ['AuthMethod', 'None'],
  ]);
  const second = await login.handle(
    request({
      transit: true,
      csg: Stage.OPERATIONAL,
      nsg: Stage.FULL_FEATURE,
      pairs: [['ImmediateData', 'No']],
    }),
  );
  assert.deepEqual(
    [second.transit, second.nsg, second.tsih, second.next],
    [true, Stage.FULL_FEATURE, 42, 'full-feature'],
  );
  assert.equal(admitted[0]?.initiatorName, 'iqn.2026-11.example:host');
  assert.equal(admitted[0]?.isid, '800000000001');
  assert.equal(admitted[0]?.params.immediateData, false);
});

test('keys split over PDUs with the C bit are gathered before they are answered', async () => {
  const login = new LoginNegotiation(context({ allowedInitiators: [] }));
  const text = encodeText([...FIRST, ['AuthMethod', 'None']]);
  const part = await login.handle(request({ continue: true, data: text.subarray(0, 10) }));
  assert.deepEqual([part.next, part.data.length, part.transit], ['continue', 0, false]);
  const rest = await login.handle(
    request({ transit: true, nsg: Stage.FULL_FEATURE, data: text.subarray(10) }),
  );
  assert.equal(rest.next, 'full-feature');
});

test('CHAP with a base64 response, then mutual CHAP answered with the target secret', async () => {
  const access: VolumeAccess = {
    allowedInitiators: [],
    chap: {
      user: 'u',
      secret: 'secret-of-16-bytes',
      mutualUser: 't',
      mutualSecret: 'mutual-secret-16',
    },
  };
  const login = new LoginNegotiation(context(access));
  const offer = await login.handle(
    request({ transit: true, nsg: 1, pairs: [...FIRST, ['AuthMethod', 'CHAP,None']] }),
  );
  assert.equal(offer.transit, false, 'no transit before CHAP is done');
  const challenge = parseText((await login.handle(request({ pairs: [['CHAP_A', '7,5']] }))).data);
  assert.deepEqual(challenge, [
    ['CHAP_A', '5'],
    ['CHAP_I', '9'],
    ['CHAP_C', `0x${CHALLENGE.toString('hex')}`],
  ]);
  const mutualChallenge = Buffer.alloc(16, 1);
  const answer = await login.handle(
    request({
      transit: true,
      nsg: 1,
      pairs: [
        ['CHAP_N', 'u'],
        ['CHAP_R', `0b${chapResponse(9, 'secret-of-16-bytes', CHALLENGE).toString('base64')}`],
        ['CHAP_I', '3'],
        ['CHAP_C', `0x${mutualChallenge.toString('hex')}`],
      ],
    }),
  );
  assert.equal(answer.status, LoginStatuses.SUCCESS);
  assert.equal(answer.transit, true);
  assert.deepEqual(parseText(answer.data), [
    ['CHAP_N', 't'],
    ['CHAP_R', `0x${chapResponse(3, 'mutual-secret-16', mutualChallenge).toString('hex')}`],
  ]);
});

test('CHAP failures: wrong response, wrong name, reflected challenge, no CHAP offered', async () => {
  const access: VolumeAccess = {
    allowedInitiators: [],
    chap: {
      user: 'u',
      secret: 'secret-of-16-bytes',
      mutualUser: 't',
      mutualSecret: 'mutual-secret-16',
    },
  };
  const attempt = async (pairs: Array<[string, string]>): Promise<number> => {
    const login = new LoginNegotiation(context(access));
    await login.handle(request({ pairs: [...FIRST, ['AuthMethod', 'CHAP']] }));
    await login.handle(request({ pairs: [['CHAP_A', '5']] }));
    const answer = await login.handle(request({ transit: true, nsg: 1, pairs }));
    return (answer.status.statusClass << 8) | answer.status.statusDetail;
  };
  const good = `0x${chapResponse(9, 'secret-of-16-bytes', CHALLENGE).toString('hex')}`;
  assert.equal(
    await attempt([
      ['CHAP_N', 'u'],
      ['CHAP_R', '0x00112233'],
    ]),
    0x0201,
  );
  assert.equal(
    await attempt([
      ['CHAP_N', 'x'],
      ['CHAP_R', good],
    ]),
    0x0201,
  );
  assert.equal(
    await attempt([
      ['CHAP_N', 'u'],
      ['CHAP_R', good],
      ['CHAP_I', '9'],
      ['CHAP_C', `0x${CHALLENGE.toString('hex')}`],
    ]),
    0x0201,
  );
  assert.equal(
    await attempt([
      ['CHAP_N', 'u'],
      ['CHAP_R', good],
    ]),
    0x0000,
  );
  const noChap = new LoginNegotiation(context(access));
  const refused = await noChap.handle(
    request({ transit: true, nsg: 1, pairs: [...FIRST, ['AuthMethod', 'None']] }),
  );
  assert.equal(refused.status, LoginStatuses.AUTHENTICATION_FAILURE);
  const skipped = new LoginNegotiation(context(access));
  const straight = await skipped.handle(
    request({ transit: true, csg: Stage.OPERATIONAL, nsg: 3, pairs: FIRST }),
  );
  assert.equal(
    straight.status,
    LoginStatuses.AUTHENTICATION_FAILURE,
    'skipping the security stage must not skip CHAP',
  );
});

test('failure statuses: missing InitiatorName, unknown target, access list, bad version, bad stage', async () => {
  const statusOf = async (access: VolumeAccess, pdu: LoginRequestPdu): Promise<number> => {
    const answer = await new LoginNegotiation(context(access)).handle(pdu);
    assert.equal(answer.next === 'close', answer.status !== LoginStatuses.SUCCESS);
    return (answer.status.statusClass << 8) | answer.status.statusDetail;
  };
  const open: VolumeAccess = { allowedInitiators: [] };
  assert.equal(
    await statusOf(open, request({ pairs: [['TargetName', 'iqn.2026-11.io.cistern:vol']] })),
    0x0207,
  );
  assert.equal(
    await statusOf(
      open,
      request({
        pairs: [
          ['InitiatorName', 'iqn.x:y'],
          ['TargetName', 'iqn.2026-11.io.cistern:no'],
        ],
      }),
    ),
    0x0203,
  );
  assert.equal(
    await statusOf({ allowedInitiators: ['iqn.other:one'] }, request({ pairs: FIRST })),
    0x0202,
  );
  assert.equal(
    await statusOf({ allowedInitiators: ['IQN.2026-11.EXAMPLE:HOST'] }, request({ pairs: FIRST })),
    0x0000,
  );
  assert.equal(await statusOf(open, request({ versionMin: 2, pairs: FIRST })), 0x0205);
  assert.equal(await statusOf(open, request({ csg: Stage.FULL_FEATURE, pairs: FIRST })), 0x0200);
  assert.equal(
    await statusOf(
      open,
      request({
        pairs: [
          ['InitiatorName', 'iqn.x:y'],
          ['SessionType', 'Weird'],
        ],
      }),
    ),
    0x0209,
  );
  assert.equal(
    await statusOf(open, request({ data: Buffer.from('garbage-without-equals') })),
    0x0200,
  );
});

test('a discovery session needs no target and sends no TPGT', async () => {
  const login = new LoginNegotiation(context({ allowedInitiators: [] }));
  const answer = await login.handle(
    request({
      transit: true,
      nsg: Stage.FULL_FEATURE,
      pairs: [
        ['InitiatorName', 'iqn.x:y'],
        ['SessionType', 'Discovery'],
        ['AuthMethod', 'None'],
      ],
    }),
  );
  assert.equal(answer.next, 'full-feature');
  assert.deepEqual(parseText(answer.data), [['AuthMethod', 'None']]);
  assert.equal(login.result?.sessionType, 'discovery');
});

// Text keys and negotiation: key=value\0 parsing and its bounds, and each operational
// key's RFC 7143 result function (min, max, AND, OR, list choice, declarative), with
// Reject for values out of range and NotUnderstood for unknown keys.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { IscsiProtocolError } from './pdu';
import {
  DEFAULT_PARAMETERS,
  encodeText,
  finishParameters,
  MAX_KEY_BYTES,
  negotiateKey,
  parseNumber,
  parseText,
  type TargetLimits,
} from './text';

const LIMITS: TargetLimits = {
  maxRecvDataSegmentLength: 262144,
  maxBurstLength: 1048576,
  firstBurstLength: 262144,
  maxOutstandingR2T: 4,
};

test('parseText reads pairs with and without the last NUL, keeps "=" in values, round-trips encodeText', () => {
  assert.deepEqual(parseText(Buffer.from('A=1\0B=x=y\0C=')), [
    ['A', '1'],
    ['B', 'x=y'],
    ['C', ''],
  ]);
  const pairs: Array<[string, string]> = [
    ['InitiatorName', 'iqn.2026-11.example:a'],
    ['SessionType', 'Normal'],
  ];
  assert.deepEqual(parseText(encodeText(pairs)), pairs);
});

test('parseText refuses a pair without a key, an over-long key, bad key characters', () => {
  for (const bad of ['=1', 'novalue', `${'K'.repeat(MAX_KEY_BYTES + 1)}=1`, 'a b=1']) {
    assert.throws(() => parseText(Buffer.from(bad)), IscsiProtocolError, bad);
  }
});

test('numbers: decimal and hex within range, nothing else', () => {
  assert.equal(parseNumber('8192', 512, 16777215), 8192);
  assert.equal(parseNumber('0x2000', 512, 16777215), 8192);
  assert.equal(parseNumber('100', 512, 16777215), undefined);
  assert.equal(parseNumber('-1', 0, 10), undefined);
  assert.equal(parseNumber('1e3', 0, 10000), undefined);
});

test('each key follows its result function', () => {
  const params = { ...DEFAULT_PARAMETERS };
  assert.equal(negotiateKey('HeaderDigest', 'CRC32C,None', params, LIMITS), 'CRC32C');
  assert.equal(params.headerDigest, true);
  assert.equal(negotiateKey('DataDigest', 'None,CRC32C', params, LIMITS), 'None');
  assert.equal(negotiateKey('DataDigest', 'MD5', params, LIMITS), 'Reject');
  assert.equal(negotiateKey('InitialR2T', 'No', params, LIMITS), 'No');
  assert.equal(params.initialR2T, false);
  assert.equal(negotiateKey('ImmediateData', 'No', params, LIMITS), 'No');
  assert.equal(params.immediateData, false);
  assert.equal(negotiateKey('MaxBurstLength', '16776192', params, LIMITS), '1048576');
  assert.equal(negotiateKey('FirstBurstLength', '8192', params, LIMITS), '8192');
  assert.equal(negotiateKey('MaxOutstandingR2T', '64', params, LIMITS), '4');
  assert.equal(negotiateKey('ErrorRecoveryLevel', '2', params, LIMITS), '0');
  assert.equal(negotiateKey('MaxConnections', '4', params, LIMITS), '1');
  assert.equal(negotiateKey('DefaultTime2Wait', '0', params, LIMITS), '2');
  assert.equal(negotiateKey('DefaultTime2Retain', '20', params, LIMITS), '0');
  assert.equal(negotiateKey('DataPDUInOrder', 'No', params, LIMITS), 'Yes');
  assert.equal(negotiateKey('DataSequenceInOrder', 'No', params, LIMITS), 'Yes');
  assert.equal(negotiateKey('MaxRecvDataSegmentLength', '65536', params, LIMITS), undefined);
  assert.equal(params.initiatorMaxRecvDataSegmentLength, 65536);
  assert.equal(negotiateKey('MaxRecvDataSegmentLength', '100', params, LIMITS), 'Reject');
  assert.equal(negotiateKey('InitialR2T', 'maybe', params, LIMITS), 'Reject');
  assert.equal(negotiateKey('IFMarker', 'No', params, LIMITS), 'No');
  assert.equal(negotiateKey('X-vendor.key', '1', params, LIMITS), 'NotUnderstood');
});

test('FirstBurstLength never ends above MaxBurstLength', () => {
  const params = { ...DEFAULT_PARAMETERS, firstBurstLength: 65536, maxBurstLength: 16384 };
  assert.equal(finishParameters(params).firstBurstLength, 16384);
});

// The target's side of the login phase (RFC 7143 §6, §13): security stage (AuthMethod,
// CHAP one-way and mutual), operational stage (key negotiation, text.ts), the transit to
// full feature phase, discovery versus normal sessions, the target and access-list checks.
// One LoginNegotiation per connection; it sees decoded Login Requests and answers with
// what the Login Response must say. The connection adds the sequence numbers and sends.

import * as crypto from 'node:crypto';
import { assert } from '../../util/assert';
import type { VolumeAccess } from './access';
import { IscsiProtocolError, Stage, type LoginRequestPdu } from './pdu';
import {
  DEFAULT_PARAMETERS,
  IRRELEVANT,
  MAX_TEXT_BYTES,
  REJECT,
  encodeText,
  finishParameters,
  negotiateKey,
  parseText,
  type SessionParameters,
  type TargetLimits,
  type TextPairs,
} from './text';

/** Login status class and detail (RFC 7143 §11.13.5). */
export interface LoginStatus {
  readonly statusClass: number;
  readonly statusDetail: number;
}

const status = (statusClass: number, statusDetail: number): LoginStatus => ({
  statusClass,
  statusDetail,
});

export const LoginStatuses = {
  SUCCESS: status(0, 0),
  INITIATOR_ERROR: status(2, 0x00),
  AUTHENTICATION_FAILURE: status(2, 0x01),
  AUTHORIZATION_FAILURE: status(2, 0x02),
  NOT_FOUND: status(2, 0x03),
  UNSUPPORTED_VERSION: status(2, 0x05),
  TOO_MANY_CONNECTIONS: status(2, 0x06),
  MISSING_PARAMETER: status(2, 0x07),
  SESSION_TYPE_NOT_SUPPORTED: status(2, 0x09),
  SESSION_DOES_NOT_EXIST: status(2, 0x0a),
  INVALID_DURING_LOGIN: status(2, 0x0b),
  TARGET_ERROR: status(3, 0x00),
  SERVICE_UNAVAILABLE: status(3, 0x01),
  OUT_OF_RESOURCES: status(3, 0x02),
} as const;

/** CHAP with MD5 (RFC 1994), the only algorithm RFC 7143 requires. */
export const CHAP_ALGORITHM_MD5 = 5;
/** Our challenge length: RFC 7143 §12.1.3 asks for challenges at least as long as the secret's 16 bytes. */
export const CHAP_CHALLENGE_BYTES = 16;
/** Longest challenge we answer in mutual CHAP (RFC 7143 caps CHAP_C at 1024 bytes). */
export const CHAP_MAX_CHALLENGE_BYTES = 1024;
/** Login PDUs one login may take: a normal login takes 2–4; this ends a looping initiator. */
export const MAX_LOGIN_PDUS = 32;

export type TargetLookup =
  { kind: 'found'; volumeName: string } | { kind: 'not-found' } | { kind: 'ambiguous' };

/** What login needs from the server: target lookup, access rules, admission. */
export interface LoginContext {
  readonly limits: TargetLimits;
  readonly portalGroupTag: number;
  resolveTarget(targetName: string): Promise<TargetLookup>;
  access(volumeName: string): Promise<VolumeAccess>;
  /** Called once, just before the final response: a TSIH, or the status to fail with. */
  admit(login: CompletedLogin): Promise<{ tsih: number } | { failure: LoginStatus }>;
  randomBytes(count: number): Buffer;
}

export interface CompletedLogin {
  sessionType: 'discovery' | 'normal';
  /** Lowercased, as iSCSI names compare. */
  initiatorName: string;
  /** The target name as the initiator spelled it (normal sessions). */
  targetName: string | undefined;
  volumeName: string | undefined;
  /** 12 lowercase hex digits. */
  isid: string;
  /** The TSIH the initiator sent (0: a new session). */
  requestedTsih: number;
  cid: number;
  params: SessionParameters;
}

export interface LoginAnswer {
  transit: boolean;
  continue: boolean;
  csg: number;
  nsg: number;
  tsih: number;
  status: LoginStatus;
  data: Buffer;
  /** What happens after this response is sent. */
  next: 'continue' | 'close' | 'full-feature';
}

type AuthState =
  | { kind: 'start' }
  | { kind: 'chap-algorithm' }
  | { kind: 'chap-response'; identifier: number; challenge: Buffer }
  | { kind: 'done' };

class LoginFailure extends Error {
  constructor(
    readonly status: LoginStatus,
    message: string,
  ) {
    super(message);
  }
}

function fail(loginStatus: LoginStatus, message: string): never {
  throw new LoginFailure(loginStatus, message);
}

export class LoginNegotiation {
  private pduCount = 0;
  private first: LoginRequestPdu | undefined;
  private pendingText: Buffer[] = [];
  private pendingTextBytes = 0;
  private stage: number = Stage.SECURITY;
  private sessionType: 'discovery' | 'normal' = 'normal';
  private initiatorName: string | undefined;
  private targetName: string | undefined;
  private volumeName: string | undefined;
  private volumeAccess: VolumeAccess | undefined;
  private auth: AuthState = { kind: 'start' };
  private params: SessionParameters = { ...DEFAULT_PARAMETERS };
  private declaredLimits = false;
  private sentPortalGroupTag = false;
  private finished: CompletedLogin | undefined;
  private tsih = 0;

  constructor(private readonly context: LoginContext) {}

  /** Set once the answer with next === 'full-feature' has been produced. */
  get result(): CompletedLogin | undefined {
    return this.finished;
  }

  async handle(request: LoginRequestPdu): Promise<LoginAnswer> {
    try {
      return await this.step(request);
    } catch (error) {
      if (error instanceof LoginFailure) return this.failure(request, error.status);
      if (error instanceof IscsiProtocolError) {
        return this.failure(request, LoginStatuses.INITIATOR_ERROR);
      }
      throw error;
    }
  }

  private failure(request: LoginRequestPdu, loginStatus: LoginStatus): LoginAnswer {
    return {
      transit: false,
      continue: false,
      csg: request.csg,
      nsg: 0,
      tsih: 0,
      status: loginStatus,
      data: Buffer.alloc(0),
      next: 'close',
    };
  }

  private async step(request: LoginRequestPdu): Promise<LoginAnswer> {
    this.pduCount += 1;
    if (this.pduCount > MAX_LOGIN_PDUS) fail(LoginStatuses.INITIATOR_ERROR, 'login too long');
    this.checkHeader(request);
    this.pendingTextBytes += request.data.length;
    if (this.pendingTextBytes > MAX_TEXT_BYTES)
      fail(LoginStatuses.INITIATOR_ERROR, 'login text too long');
    this.pendingText.push(request.data);
    if (request.continue) {
      if (request.transit) fail(LoginStatuses.INITIATOR_ERROR, 'C and T bits both set');
      // The keys continue in the next PDU: acknowledge with an empty response.
      return this.answer(request, false, [], 'continue');
    }
    const pairs = parseText(Buffer.concat(this.pendingText));
    this.pendingText = [];
    this.pendingTextBytes = 0;
    const response: TextPairs = [];
    if (this.initiatorName === undefined) await this.firstRequest(pairs, response);
    if (request.csg === Stage.SECURITY) this.securityKeys(pairs, response);
    else this.operationalKeys(pairs, response);
    return this.transit(request, response);
  }

  private checkHeader(request: LoginRequestPdu): void {
    if (this.first === undefined) {
      this.first = request;
      if (request.versionMin > 0) fail(LoginStatuses.UNSUPPORTED_VERSION, 'version');
      if (request.csg !== Stage.SECURITY && request.csg !== Stage.OPERATIONAL) {
        fail(LoginStatuses.INITIATOR_ERROR, `login cannot start in stage ${request.csg}`);
      }
      this.stage = request.csg;
      return;
    }
    if (!request.isid.equals(this.first.isid) || request.tsih !== this.first.tsih) {
      fail(LoginStatuses.INITIATOR_ERROR, 'ISID or TSIH changed during login');
    }
    if (request.csg !== this.stage) fail(LoginStatuses.INITIATOR_ERROR, 'unexpected login stage');
  }

  private async firstRequest(pairs: TextPairs, response: TextPairs): Promise<void> {
    const value = (key: string): string | undefined => pairs.find(([k]) => k === key)?.[1];
    const initiatorName = value('InitiatorName');
    if (initiatorName === undefined || initiatorName.length === 0) {
      fail(LoginStatuses.MISSING_PARAMETER, 'InitiatorName missing');
    }
    this.initiatorName = initiatorName.toLowerCase();
    const sessionType = value('SessionType') ?? 'Normal';
    if (sessionType === 'Discovery') {
      this.sessionType = 'discovery';
      return;
    }
    if (sessionType !== 'Normal') fail(LoginStatuses.SESSION_TYPE_NOT_SUPPORTED, sessionType);
    const targetName = value('TargetName');
    if (targetName === undefined) fail(LoginStatuses.MISSING_PARAMETER, 'TargetName missing');
    const lookup = await this.context.resolveTarget(targetName);
    if (lookup.kind !== 'found') fail(LoginStatuses.NOT_FOUND, `no target ${targetName}`);
    this.targetName = targetName;
    this.volumeName = lookup.volumeName;
    let access: VolumeAccess;
    try {
      access = await this.context.access(lookup.volumeName);
    } catch {
      fail(LoginStatuses.NOT_FOUND, `no target ${targetName}`);
    }
    this.volumeAccess = access;
    if (!initiatorAllowed(access, this.initiatorName)) {
      fail(LoginStatuses.AUTHORIZATION_FAILURE, `${this.initiatorName} not allowed`);
    }
    response.push(['TargetPortalGroupTag', String(this.context.portalGroupTag)]);
    this.sentPortalGroupTag = true;
  }

  private chapRequired(): boolean {
    return this.sessionType === 'normal' && this.volumeAccess?.chap !== undefined;
  }

  private securityKeys(pairs: TextPairs, response: TextPairs): void {
    const chapKeys = new Map<string, string>();
    for (const [key, value] of pairs) {
      if (isDeclaredAtStart(key)) continue;
      if (key === 'AuthMethod') response.push(['AuthMethod', this.chooseAuthMethod(value)]);
      else if (key.startsWith('CHAP_')) chapKeys.set(key, value);
      else this.operationalKey(key, value, response);
    }
    if (chapKeys.size > 0) this.chap(chapKeys, response);
  }

  private chooseAuthMethod(offer: string): string {
    if (this.auth.kind !== 'start') fail(LoginStatuses.INITIATOR_ERROR, 'AuthMethod offered twice');
    const methods = offer.split(',');
    if (this.chapRequired()) {
      if (!methods.includes('CHAP')) fail(LoginStatuses.AUTHENTICATION_FAILURE, 'CHAP required');
      this.auth = { kind: 'chap-algorithm' };
      return 'CHAP';
    }
    if (!methods.includes('None')) fail(LoginStatuses.AUTHENTICATION_FAILURE, 'no CHAP secret set');
    this.auth = { kind: 'done' };
    return 'None';
  }

  private chap(keys: Map<string, string>, response: TextPairs): void {
    const credentials = this.volumeAccess?.chap;
    if (credentials === undefined) fail(LoginStatuses.INITIATOR_ERROR, 'CHAP not negotiated');
    if (this.auth.kind === 'chap-algorithm') {
      const algorithms = keys.get('CHAP_A');
      if (algorithms === undefined || keys.size !== 1) {
        fail(LoginStatuses.INITIATOR_ERROR, 'expected CHAP_A');
      }
      if (!algorithms.split(',').includes(String(CHAP_ALGORITHM_MD5))) {
        response.push(['CHAP_A', REJECT]);
        fail(LoginStatuses.AUTHENTICATION_FAILURE, 'no common CHAP algorithm');
      }
      const identifier = this.context.randomBytes(1)[0] as number;
      const challenge = this.context.randomBytes(CHAP_CHALLENGE_BYTES);
      this.auth = { kind: 'chap-response', identifier, challenge };
      response.push(['CHAP_A', String(CHAP_ALGORITHM_MD5)]);
      response.push(['CHAP_I', String(identifier)]);
      response.push(['CHAP_C', `0x${challenge.toString('hex')}`]);
      return;
    }
    if (this.auth.kind !== 'chap-response')
      fail(LoginStatuses.INITIATOR_ERROR, 'unexpected CHAP keys');
    const name = keys.get('CHAP_N');
    const answer = decodeBinary(keys.get('CHAP_R'));
    if (name === undefined || answer === undefined) {
      fail(LoginStatuses.AUTHENTICATION_FAILURE, 'CHAP_N/CHAP_R missing');
    }
    const expected = chapResponse(this.auth.identifier, credentials.secret, this.auth.challenge);
    if (name !== credentials.user || !timingSafeEqual(answer, expected)) {
      fail(LoginStatuses.AUTHENTICATION_FAILURE, 'CHAP response does not match');
    }
    const mutualIdentifier = keys.get('CHAP_I');
    const mutualChallenge = keys.get('CHAP_C');
    if (mutualIdentifier !== undefined || mutualChallenge !== undefined) {
      this.mutualChap(mutualIdentifier, mutualChallenge, response);
    }
    this.auth = { kind: 'done' };
  }

  private mutualChap(
    identifierText: string | undefined,
    challengeText: string | undefined,
    response: TextPairs,
  ): void {
    assert(this.auth.kind === 'chap-response', 'mutual CHAP outside the CHAP exchange');
    const credentials = this.volumeAccess?.chap;
    if (credentials?.mutualUser === undefined || credentials.mutualSecret === undefined) {
      fail(LoginStatuses.AUTHENTICATION_FAILURE, 'mutual CHAP asked but not configured');
    }
    const identifier = identifierText === undefined ? undefined : Number(identifierText);
    const challenge = decodeBinary(challengeText);
    if (
      identifier === undefined ||
      !Number.isInteger(identifier) ||
      identifier < 0 ||
      identifier > 255 ||
      challenge === undefined ||
      challenge.length === 0 ||
      challenge.length > CHAP_MAX_CHALLENGE_BYTES
    ) {
      fail(LoginStatuses.AUTHENTICATION_FAILURE, 'bad mutual CHAP challenge');
    }
    // A challenge equal to ours would let an attacker reflect our own question back.
    if (challenge.equals(this.auth.challenge)) {
      fail(LoginStatuses.AUTHENTICATION_FAILURE, 'mutual CHAP challenge reflected');
    }
    response.push(['CHAP_N', credentials.mutualUser]);
    const answer = chapResponse(identifier, credentials.mutualSecret, challenge);
    response.push(['CHAP_R', `0x${answer.toString('hex')}`]);
  }

  private operationalKeys(pairs: TextPairs, response: TextPairs): void {
    if (this.chapRequired() && this.auth.kind !== 'done') {
      fail(LoginStatuses.AUTHENTICATION_FAILURE, 'operational stage before CHAP');
    }
    for (const [key, value] of pairs) {
      if (isDeclaredAtStart(key)) continue;
      if (key === 'AuthMethod' || key.startsWith('CHAP_')) response.push([key, IRRELEVANT]);
      else this.operationalKey(key, value, response);
    }
    if (!this.declaredLimits) {
      this.declaredLimits = true;
      response.push([
        'MaxRecvDataSegmentLength',
        String(this.context.limits.maxRecvDataSegmentLength),
      ]);
    }
  }

  private operationalKey(key: string, value: string, response: TextPairs): void {
    if (key === 'TargetAlias' || key === 'TargetAddress' || key === 'TargetPortalGroupTag') {
      response.push([key, REJECT]);
      return;
    }
    if (key === 'SendTargets') {
      response.push([key, IRRELEVANT]);
      return;
    }
    const answer = negotiateKey(key, value, this.params, this.context.limits);
    if (answer !== undefined) response.push([key, answer]);
  }

  private async transit(request: LoginRequestPdu, response: TextPairs): Promise<LoginAnswer> {
    if (!request.transit) return this.answer(request, false, response, 'continue');
    const nsg = request.nsg;
    const validNext =
      (request.csg === Stage.SECURITY &&
        (nsg === Stage.OPERATIONAL || nsg === Stage.FULL_FEATURE)) ||
      (request.csg === Stage.OPERATIONAL && nsg === Stage.FULL_FEATURE);
    if (!validNext) fail(LoginStatuses.INITIATOR_ERROR, `bad transit ${request.csg}->${nsg}`);
    if (request.csg === Stage.SECURITY && this.auth.kind !== 'done') {
      if (this.chapRequired()) {
        // Still in the CHAP exchange (or it never began): stay in the security stage.
        if (this.auth.kind === 'start') fail(LoginStatuses.AUTHENTICATION_FAILURE, 'CHAP required');
        return this.answer(request, false, response, 'continue');
      }
      this.auth = { kind: 'done' };
    }
    if (nsg !== Stage.FULL_FEATURE) {
      this.stage = nsg;
      return this.answer(request, true, response, 'continue');
    }
    const completed: CompletedLogin = {
      sessionType: this.sessionType,
      initiatorName: this.initiatorName as string,
      targetName: this.targetName,
      volumeName: this.volumeName,
      isid: (this.first as LoginRequestPdu).isid.toString('hex'),
      requestedTsih: request.tsih,
      cid: request.cid,
      params: finishParameters(this.params),
    };
    const admitted = await this.context.admit(completed);
    if ('failure' in admitted) fail(admitted.failure, 'session not admitted');
    this.tsih = admitted.tsih;
    this.finished = completed;
    this.stage = Stage.FULL_FEATURE;
    return this.answer(request, true, response, 'full-feature');
  }

  private answer(
    request: LoginRequestPdu,
    transit: boolean,
    response: TextPairs,
    next: LoginAnswer['next'],
  ): LoginAnswer {
    assert(!this.sentPortalGroupTag || this.sessionType === 'normal', 'TPGT in discovery');
    return {
      transit,
      continue: false,
      csg: request.csg,
      nsg: transit ? request.nsg : 0,
      tsih: this.tsih,
      status: LoginStatuses.SUCCESS,
      data: encodeText(response),
      next,
    };
  }
}

/** Keys read from the first PDU only (firstRequest); later copies carry nothing new. */
function isDeclaredAtStart(key: string): boolean {
  return (
    key === 'InitiatorName' ||
    key === 'InitiatorAlias' ||
    key === 'TargetName' ||
    key === 'SessionType'
  );
}

export function initiatorAllowed(access: VolumeAccess, initiatorName: string): boolean {
  if (access.allowedInitiators.length === 0) return true;
  const name = initiatorName.toLowerCase();
  return access.allowedInitiators.some((allowed) => allowed.toLowerCase() === name);
}

/** RFC 1994: MD5 over the identifier byte, the secret, the challenge. */
export function chapResponse(identifier: number, secret: string, challenge: Uint8Array): Buffer {
  const hash = crypto.createHash('md5');
  hash.update(Buffer.from([identifier & 0xff]));
  hash.update(Buffer.from(secret, 'utf8'));
  hash.update(challenge);
  return hash.digest();
}

/** A binary value (RFC 7143 §6.1): 0x-prefixed hex or 0b-prefixed base64. */
export function decodeBinary(value: string | undefined): Buffer | undefined {
  if (value === undefined || value.length < 3) return undefined;
  const prefix = value.slice(0, 2).toLowerCase();
  const body = value.slice(2);
  if (prefix === '0x') {
    if (!/^[0-9a-fA-F]+$/.test(body)) return undefined;
    return Buffer.from(body.length % 2 === 1 ? `0${body}` : body, 'hex');
  }
  if (prefix === '0b') {
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(body)) return undefined;
    return Buffer.from(body, 'base64');
  }
  return undefined;
}

function timingSafeEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

// What the command table's handlers see of the logical unit beyond block I/O: identity,
// mode parameters, reservations and unit attention. The LogicalUnit class implements it.

import type { ScsiTask } from '../scsi-task';
import type { UnitContext } from './context';
import type { UnitIdentity } from './inquiry';
import type { ModeState } from './mode';
import type { Reservations } from './reservations';
import type { Asc } from './sense';

export interface Unit extends UnitContext {
  readonly identity: UnitIdentity;
  readonly mode: ModeState;
  readonly reservations: Reservations;
  /** Takes the oldest unit attention pending for the task's nexus (REQUEST SENSE reports it). */
  takeUnitAttention(task: ScsiTask): Asc | undefined;
  /** Queues a unit attention for every nexus that knows this unit except `except`. */
  notifyOthers(except: string, condition: Asc): void;
}

/**
 * An agent orchestrator loop: each turn runs some tool calls; each call is logged synchronously and the
 * turn ends with one flush, one INSERT for the whole turn.
 */
import { AuditBatcher } from 'audit-batcher';

export interface ToolCall {
  tool: string;
  args: Record<string, unknown>;
}

/** Runs one turn of tool calls for `actor`, then flushes; returns the audit ids in call order. */
export async function runTurn(
  audit: AuditBatcher,
  actor: string,
  calls: ToolCall[],
  runTool: (call: ToolCall) => Promise<unknown>,
): Promise<string[]> {
  const ids: string[] = [];
  for (const call of calls) {
    ids.push(audit.log({ action: 'tool.call', actor, resource: `tool:${call.tool}`, payload: call }));
    try {
      const result = await runTool(call);
      ids.push(audit.log({ action: 'tool.result', actor, resource: `tool:${call.tool}`, outcome: 'success', payload: { result } }));
    } catch (err) {
      ids.push(
        audit.log({
          action: 'tool.error',
          actor,
          resource: `tool:${call.tool}`,
          outcome: 'error',
          payload: { message: err instanceof Error ? err.message : String(err) },
        }),
      );
    }
  }
  await audit.flush(); // turn end
  return ids;
}

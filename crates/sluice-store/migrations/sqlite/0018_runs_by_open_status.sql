-- Runs by status, for every status but `succeeded`, which most runs end
-- in: a run recorded as succeeded with its first write (a synchronous
-- webhook, a flow of pure steps) writes one index page fewer (about a
-- twentieth of a webhook's CPU at one connection). A listing of succeeded
-- runs reads them in the order of `runs_by_start` (or `runs_by_flow`).
-- A query uses this index only when it says `status <> 'succeeded'`
-- itself (SQLite does not infer it from `status = ?`).
DROP INDEX runs_by_status;
CREATE INDEX runs_by_status ON runs (status, started_at DESC, id DESC) WHERE status <> 'succeeded';

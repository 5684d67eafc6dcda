//! The store a URL names: SQLite (a file path, `sqlite:…`,
//! `sqlite::memory:`) or PostgreSQL (`postgres://…`, `postgresql://…`),
//! chosen when the process starts.

use crate::{
    ApiToken, AuditEntry, FlowStats, Leases, NewRun, Notice, Notification, PgStore, Reader,
    RunDetail, RunFilter, RunSummary, RunUpdate, SeenEvent, SqliteStore, StepRecord, Store,
    StoreError, Wait,
};
use serde_json::Value;
use sluice_expr::Val;

/// One of the stores, by its URL.
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// The embedded default.
    Sqlite(SqliteStore),
    /// Shared by many processes.
    Postgres(PgStore),
}

impl AnyStore {
    /// Open the store `url` names.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        if Self::names_postgres(url) {
            Ok(Self::Postgres(PgStore::open(url).await?))
        } else {
            Ok(Self::Sqlite(SqliteStore::open(url).await?))
        }
    }

    /// Whether `url` names a PostgreSQL store (else it is SQLite).
    pub fn names_postgres(url: &str) -> bool {
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    /// Close the store once its last write is committed: its writer stops
    /// (a SQLite file's writer first empties a WAL grown past 512 KB into
    /// the database), its connections end, and only then does the call
    /// return.
    pub async fn close(self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(s) => s.close().await,
        }
    }

    /// See [`SqliteStore::settle`]; nothing on PostgreSQL.
    pub async fn settle(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.settle().await,
            Self::Postgres(_) => Ok(()),
        }
    }

    /// `sqlite`, or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// The same call on whichever store it is. The call's future is boxed: a
/// caller's future (a run's steps, awaiting the store in many places)
/// would otherwise hold the larger of the two stores' futures inline at
/// each of those places, and it is moved whole when a run starts (an
/// import starts one per record).
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($s) => Box::pin($call).await,
            AnyStore::Postgres($s) => Box::pin($call).await,
        }
    };
}

impl Store for AnyStore {
    async fn create_run(&self, run: &NewRun) -> Result<(), StoreError> {
        each!(self, s => s.create_run(run))
    }
    async fn record_steps(
        &self,
        new: Option<&NewRun>,
        steps: &[StepRecord],
        run: &RunUpdate,
    ) -> Result<(), StoreError> {
        each!(self, s => s.record_steps(new, steps, run))
    }
    async fn update_run(&self, run_id: &str, run: &RunUpdate) -> Result<(), StoreError> {
        each!(self, s => s.update_run(run_id, run))
    }
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        each!(self, s => s.list_runs(filter))
    }
    async fn flow_stats(&self, since: i64) -> Result<Vec<FlowStats>, StoreError> {
        each!(self, s => s.flow_stats(since))
    }
    async fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StoreError> {
        each!(self, s => s.get_run(run_id))
    }
    async fn flow_of_run(
        &self,
        run_id: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        each!(self, s => s.flow_of_run(run_id))
    }
    async fn save_flow_version(
        &self,
        flow_id: &str,
        version: &str,
        source: &str,
    ) -> Result<(), StoreError> {
        each!(self, s => s.save_flow_version(flow_id, version, source))
    }
    async fn flow_version(
        &self,
        flow_id: &str,
        version: &str,
    ) -> Result<Option<String>, StoreError> {
        each!(self, s => s.flow_version(flow_id, version))
    }
    async fn resume_run(&self, run_id: &str, state: &Val) -> Result<(), StoreError> {
        each!(self, s => s.resume_run(run_id, state))
    }
    async fn count_recovery(&self, run_id: &str) -> Result<u32, StoreError> {
        each!(self, s => s.count_recovery(run_id))
    }
    async fn create_token(&self, token: &ApiToken) -> Result<(), StoreError> {
        each!(self, s => s.create_token(token))
    }
    async fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        each!(self, s => s.tokens())
    }
    async fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        each!(self, s => s.token_by_hash(hash))
    }
    async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        each!(self, s => s.revoke_token(name))
    }
    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        each!(self, s => s.audit(entry))
    }
    async fn audit_log(
        &self,
        target: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        each!(self, s => s.audit_log(target, limit))
    }
    async fn notify(&self, n: &Notification) -> Result<bool, StoreError> {
        each!(self, s => s.notify(n))
    }
    async fn notifications(
        &self,
        reader: Reader<'_>,
        limit: u32,
        unread: bool,
    ) -> Result<(Vec<(Notification, bool)>, u64), StoreError> {
        each!(self, s => s.notifications(reader, limit, unread))
    }
    async fn mark_read(&self, id: &str, reader: &str) -> Result<bool, StoreError> {
        each!(self, s => s.mark_read(id, reader))
    }
    async fn cancel_run(&self, run_id: &str) -> Result<(), StoreError> {
        each!(self, s => s.cancel_run(run_id))
    }
    async fn suspend(
        &self,
        step: Option<&StepRecord>,
        state: &Val,
        wait: &Wait,
    ) -> Result<bool, StoreError> {
        each!(self, s => s.suspend(step, state, wait))
    }
    async fn claim_wait(
        &self,
        run_id: &str,
        event: Option<&Value>,
    ) -> Result<Option<Wait>, StoreError> {
        each!(self, s => s.claim_wait(run_id, event))
    }
    async fn list_waits(&self, event_type: Option<&str>) -> Result<Vec<Wait>, StoreError> {
        each!(self, s => s.list_waits(event_type))
    }
    async fn claim_fire(&self, flow_id: &str, at: i64, run: &NewRun) -> Result<bool, StoreError> {
        each!(self, s => s.claim_fire(flow_id, at, run))
    }
    async fn last_fire(&self, flow_id: &str) -> Result<Option<i64>, StoreError> {
        each!(self, s => s.last_fire(flow_id))
    }
    async fn seen_event(&self, source: &str, id: &str) -> Result<Option<SeenEvent>, StoreError> {
        each!(self, s => s.seen_event(source, id))
    }
    async fn accept_event(
        &self,
        source: &str,
        id: &str,
        received_at: i64,
        answer: &Value,
        runs: &[NewRun],
    ) -> Result<bool, StoreError> {
        each!(self, s => s.accept_event(source, id, received_at, answer, runs))
    }
    async fn poll_snapshot(&self, flow_id: &str) -> Result<(i64, Option<Value>), StoreError> {
        each!(self, s => s.poll_snapshot(flow_id))
    }
    async fn advance_poll(
        &self,
        flow_id: &str,
        seq: i64,
        snapshot: &Value,
        runs: &[NewRun],
    ) -> Result<bool, StoreError> {
        each!(self, s => s.advance_poll(flow_id, seq, snapshot, runs))
    }
    fn process_id(&self) -> &str {
        match self {
            AnyStore::Sqlite(s) => s.process_id(),
            AnyStore::Postgres(s) => s.process_id(),
        }
    }
    fn shared(&self) -> bool {
        matches!(self, AnyStore::Postgres(_))
    }
    async fn take_over(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        each!(self, s => s.take_over(limit))
    }
    async fn held_runs(&self) -> Result<Vec<String>, StoreError> {
        each!(self, s => s.held_runs())
    }
    fn leases(&self) -> Option<Leases> {
        match self {
            AnyStore::Sqlite(s) => s.leases(),
            AnyStore::Postgres(s) => s.leases(),
        }
    }
    async fn own_poll(&self, flow_id: &str) -> Result<bool, StoreError> {
        each!(self, s => s.own_poll(flow_id))
    }
    async fn wait_of(&self, run_id: &str) -> Result<Option<Wait>, StoreError> {
        each!(self, s => s.wait_of(run_id))
    }
    async fn due_waits(&self, before: i64) -> Result<Vec<Wait>, StoreError> {
        each!(self, s => s.due_waits(before))
    }
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        match self {
            AnyStore::Sqlite(s) => s.notices(),
            AnyStore::Postgres(s) => s.notices(),
        }
    }
}

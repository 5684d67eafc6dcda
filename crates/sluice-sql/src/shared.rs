//! A run's one transaction (`transaction: flow`): opened by the run's
//! first SQL step, kept by the engine between steps, each step's work in a
//! savepoint of it (released when the step succeeds, rolled back to when it
//! fails, so that a failure path can go on), committed by the engine when
//! the run succeeds with a record of the run's end in it.

use crate::db::{Db, Fetched, Pools, Stmt, Tx};
use crate::decode::numbers_again;
use serde_json::{Map, Value};
use sluice_action::{ActionCx, ActionError, Blame, BoxFuture, CommittedRuns, FlowTx, OpenTx};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The key under which a run's one transaction records the run's end.
fn run_key(run_id: &str) -> String {
    format!("run:{run_id}")
}

/// The open transaction of a run, between its steps.
pub(crate) struct SharedTx {
    tx: Tx,
    /// The connection it is on.
    connection: String,
    /// A savepoint to roll back to before anything else (a step that
    /// failed was dropped without rolling back: drops cannot wait).
    pending: Option<String>,
    /// Savepoints made so far.
    savepoints: u32,
}

impl OpenTx for SharedTx {
    fn commit(
        self: Box<Self>,
        run_id: String,
        output: Value,
    ) -> BoxFuture<'static, Result<(), ActionError>> {
        Box::pin(async move {
            let mut me = *self;
            if let Some(sp) = me.pending.take() {
                me.tx.raw(&format!("ROLLBACK TO SAVEPOINT {sp}")).await?;
            }
            me.tx.complete(&run_key(&run_id), &output).await?;
            me.tx.commit().await
        })
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// A step's transaction: its own, or a savepoint of its run's one
/// transaction. Dropped without [`StepTx::commit`], its work is rolled back.
pub(crate) struct StepTx<'a> {
    own: Option<Tx>,
    shared: Option<Savepoint<'a>>,
}

/// A step's savepoint of its run's transaction, which goes back to the
/// run's slot when the step is done.
struct Savepoint<'a> {
    slot: &'a FlowTx,
    open: Option<Box<SharedTx>>,
    name: String,
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if let Some(mut o) = self.open.take() {
            // Rolled back to before the run's next statement.
            o.pending = Some(std::mem::take(&mut self.name));
            self.slot.put(o);
        }
    }
}

impl<'a> StepTx<'a> {
    /// Begin the step's writes on `connection` (`db`): in a transaction of
    /// their own, or in the run's.
    pub(crate) async fn begin(
        db: &Arc<Db>,
        cx: &ActionCx<'a>,
        connection: &str,
    ) -> Result<Self, ActionError> {
        match cx.flow_tx {
            None => Ok(Self {
                own: Some(db.begin_write().await?),
                shared: None,
            }),
            Some(slot) => Self::shared(db, slot, connection).await,
        }
    }

    /// A savepoint of the run's transaction (opened now if this is its
    /// first SQL step).
    async fn shared(db: &Arc<Db>, slot: &'a FlowTx, connection: &str) -> Result<Self, ActionError> {
        let mut open = match slot.take() {
            None => Box::new(SharedTx {
                tx: db.begin_write().await?,
                connection: connection.to_owned(),
                pending: None,
                savepoints: 0,
            }),
            Some(t) => t
                .into_any()
                .downcast::<SharedTx>()
                .map_err(|_| ActionError {
                    blame: Blame::Bug,
                    message: "the run's transaction belongs to another connector".into(),
                    retry_after_ms: None,
                    incident: false,
                })?,
        };
        if open.connection != connection {
            let message = format!(
                "this step uses connection `{connection}` and the run's transaction is on `{}`: under `transaction: flow` every step uses one connection",
                open.connection
            );
            slot.put(open);
            return Err(ActionError::flow(message));
        }
        if let Some(sp) = open.pending.take() {
            open.tx.raw(&format!("ROLLBACK TO SAVEPOINT {sp}")).await?;
        }
        open.savepoints += 1;
        let name = format!("sluice_step_{}", open.savepoints);
        open.tx.raw(&format!("SAVEPOINT {name}")).await?;
        Ok(Self {
            own: None,
            shared: Some(Savepoint {
                slot,
                open: Some(open),
                name,
            }),
        })
    }

    /// The transaction to run statements in.
    pub(crate) fn tx(&mut self) -> &mut Tx {
        if let Some(tx) = &mut self.own {
            return tx;
        }
        match self.shared.as_mut().and_then(|s| s.open.as_mut()) {
            Some(o) => &mut o.tx,
            None => unreachable!("a step's transaction is open until it is done"),
        }
    }

    /// The step's work is done: commit its transaction, or release its
    /// savepoint (the run commits).
    pub(crate) async fn commit(mut self) -> Result<(), ActionError> {
        if let Some(tx) = self.own.take() {
            return tx.commit().await;
        }
        let Some(sp) = self.shared.as_mut() else {
            return Ok(());
        };
        let Some(mut o) = sp.open.take() else {
            return Ok(());
        };
        let released = o.tx.raw(&format!("RELEASE SAVEPOINT {}", sp.name)).await;
        if released.is_err() {
            o.pending = Some(sp.name.clone());
        }
        sp.slot.put(o);
        released
    }
}

/// Where a step's reads go: to the pool, or through its run's one
/// transaction (so that it sees what the run wrote before it).
pub(crate) struct Reads<'a> {
    db: Arc<Db>,
    step: Option<StepTx<'a>>,
    /// A read transaction of its own, when a step reads in one.
    own: Option<Tx>,
}

impl<'a> Reads<'a> {
    /// The reads of a step on `connection`.
    pub(crate) async fn of(
        db: &Arc<Db>,
        cx: &ActionCx<'a>,
        connection: &str,
    ) -> Result<Self, ActionError> {
        let step = match cx.flow_tx {
            None => None,
            Some(slot) => Some(StepTx::shared(db, slot, connection).await?),
        };
        Ok(Self {
            db: db.clone(),
            step,
            own: None,
        })
    }

    /// A transaction to read in: the run's, or one of the step's own.
    pub(crate) async fn tx(&mut self) -> Result<&mut Tx, ActionError> {
        if let Some(s) = &mut self.step {
            return Ok(s.tx());
        }
        if self.own.is_none() {
            self.own = Some(self.db.begin().await?);
        }
        match &mut self.own {
            Some(tx) => Ok(tx),
            None => unreachable!("opened just above"),
        }
    }

    /// Run a statement.
    pub(crate) async fn run(&mut self, st: &Stmt, fetch: bool) -> Result<Fetched, ActionError> {
        match &mut self.step {
            Some(s) => s.tx().run(st, fetch).await,
            None => self.db.run(st, fetch).await,
        }
    }

    /// The rows of a query.
    pub(crate) async fn rows(&mut self, st: &Stmt) -> Result<Vec<Map<String, Value>>, ActionError> {
        match self.run(st, true).await? {
            Fetched::Rows(r) => Ok(r),
            Fetched::Affected(_) => Ok(Vec::new()),
        }
    }

    /// The first `most` rows of a query; the rest are not read into memory.
    pub(crate) async fn rows_at_most(
        &mut self,
        st: &Stmt,
        most: usize,
    ) -> Result<Vec<Map<String, Value>>, ActionError> {
        match &mut self.step {
            Some(s) => s.tx().rows_at_most(st, most).await,
            None => self.db.rows_at_most(st, most).await,
        }
    }

    /// The rows of a query of a table, numbers read as its columns say.
    pub(crate) async fn table_rows(
        &mut self,
        st: &Stmt,
        cols: &BTreeMap<String, String>,
    ) -> Result<Vec<Map<String, Value>>, ActionError> {
        Ok(numbers_again(self.rows(st).await?, cols))
    }

    /// The reads are done (a savepoint of the run's transaction released).
    pub(crate) async fn done(self) -> Result<(), ActionError> {
        match self.step {
            Some(s) => s.commit().await,
            None => Ok(()),
        }
    }
}

/// Whether a run's one transaction committed: the output that run recorded
/// in it, if it did (the run ended just before the process stopped, before
/// the store heard of it).
pub(crate) struct SqlCommittedRuns(pub(crate) Arc<Pools>);

impl CommittedRuns for SqlCommittedRuns {
    fn committed<'a>(
        &'a self,
        connections: &'a BTreeMap<String, Value>,
        connection: &'a str,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, ActionError>> {
        Box::pin(async move {
            let db = self.0.db(connections, connection).await?;
            db.clone().completions_ready().await?;
            let mut tx = db.begin().await?;
            tx.completed(&run_key(run_id)).await
        })
    }
}

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::time::Instant;
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let p = std::env::temp_dir().join("probe.db");
    let _ = std::fs::remove_file(&p);
    let o = SqliteConnectOptions::new()
        .filename(&p)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if std::env::var("SYNC_OFF").is_ok() {
            SqliteSynchronous::Off
        } else {
            SqliteSynchronous::Normal
        })
        .locking_mode(if std::env::var("EXCL").is_ok() {
            sqlx::sqlite::SqliteLockingMode::Exclusive
        } else {
            sqlx::sqlite::SqliteLockingMode::Normal
        });
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(o)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (a INTEGER, b TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE u (a INTEGER PRIMARY KEY, b TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO u VALUES (1, 'x')")
        .execute(&pool)
        .await
        .unwrap();
    let n = 2000;
    let t = Instant::now();
    for i in 0..n {
        sqlx::query("INSERT INTO t VALUES (?, ?)")
            .bind(i)
            .bind("{\"count\": 1, \"last\": \"s1\"}")
            .execute(&pool)
            .await
            .unwrap();
    }
    println!("single insert: {:?}/op", t.elapsed() / n);
    let t = Instant::now();
    for i in 0..n {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (?, ?)")
            .bind(i)
            .bind("{\"count\": 1, \"last\": \"s1\"}")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("UPDATE u SET b = ? WHERE a = 1")
            .bind("{\"count\": 1}")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    println!("tx insert+update: {:?}/op", t.elapsed() / n);
    let t = Instant::now();
    for i in 0..n {
        sqlx::query(
            "BEGIN; INSERT INTO t VALUES (?1, ?2); UPDATE u SET b = ?3 WHERE a = 1; COMMIT;",
        )
        .bind(i)
        .bind("{\"count\": 1, \"last\": \"s1\"}")
        .bind(format!("v{i}"))
        .execute(&pool)
        .await
        .unwrap();
    }
    println!("multi-statement tx: {:?}/op", t.elapsed() / n);
    let (c,): (i64,) = sqlx::query_as("SELECT count(*) FROM t")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (b,): (String,) = sqlx::query_as("SELECT b FROM u")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!("rows {c} last {b}");
    let mut conn = pool.acquire().await.unwrap();
    let t = Instant::now();
    for _ in 0..n {
        sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
    }
    println!("select 1 round trip: {:?}/op", t.elapsed() / n);
}

//! The gateway's connections to the hub: one pool, and a transaction per
//! request that acts for the request's peer.
//!
//! ```text
//!  request ──Hub::begin(peer)──> BEGIN; sync_act_for_peer(name, claims)   (the peer's role, sync_claim())
//!                                      set_config('statement_timeout')
//!          ──Session::query…──> the peer's own privileges and RLS decide
//!          ──commit() / rollback()
//! ```
//!
//! A session dropped before it finished (the client went away in the
//! middle of a streamed page) takes its connection out of the pool and
//! closes it, so a transaction left open never serves another request.

use super::auth::Peer;
use super::config::GatewayConfig;
use super::error::ApiError;
use crate::error::Error;
use crate::source::ConnectOptions;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, RowStream};

pub struct Hub {
    pool: Pool,
    statement_timeout_ms: u64,
}

/// `-c name=value` startup options for the session settings every hub
/// connection pins (values print the same way as the worker's).
fn startup_options() -> String {
    crate::hub::SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("-c {k}={}", v.replace(' ', "\\ ")))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Hub {
    pub fn new(c: &GatewayConfig) -> Result<Hub, Error> {
        let url = c
            .database_url
            .as_deref()
            .ok_or_else(|| Error::Config("gateway.database_url is not set".into()))?;
        let o = ConnectOptions::from_url(url, c.password.clone())?;
        let (tls, mode) = crate::tls::postgres_connector(&o)?;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&o.host)
            .port(o.port)
            .user(&o.user)
            .dbname(&o.dbname)
            .application_name("tributary-gateway")
            .options(startup_options())
            .ssl_mode(mode)
            .connect_timeout(Duration::from_secs(10));
        if let Some(p) = &o.password {
            pg.password(p);
        }
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(c.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_millis(c.request_timeout_ms)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Config(format!("gateway pool: {e}")))?;
        Ok(Hub {
            pool,
            statement_timeout_ms: c.request_timeout_ms,
        })
    }

    /// A connection of the gateway's own role (the watcher's).
    pub async fn own(&self) -> Result<Object, ApiError> {
        Ok(self.pool.get().await?)
    }

    /// Opens a transaction acting for `peer`.
    pub async fn begin(&self, peer: &Peer) -> Result<Session, ApiError> {
        let client = self.pool.get().await?;
        let act = client
            .prepare_cached(
                "SELECT sync_act_for_peer($1, $2::text::jsonb), set_config('statement_timeout', $3, true)",
            )
            .await?;
        let claims = serde_json::Value::Object(peer.claims.clone()).to_string();
        let timeout = self.statement_timeout_ms.to_string();
        let mut s = Session {
            client: Some(client),
            open: true,
            role: String::new(),
        };
        let c = s.client();
        let params: [&(dyn ToSql + Sync); 3] = [&peer.name, &claims, &timeout];
        // Pipelined: BEGIN and the switch go out together.
        let r = tokio::try_join!(c.batch_execute("BEGIN"), c.query_one(&act, &params));
        match r {
            Ok((_, row)) => {
                s.role = row.get(0);
                Ok(s)
            }
            Err(e) => {
                s.rollback().await;
                Err(e.into())
            }
        }
    }
}

pub struct Session {
    client: Option<Object>,
    open: bool,
    /// The peer's role, as the hub switched to it.
    pub role: String,
}

impl Session {
    fn client(&self) -> &Object {
        self.client
            .as_ref()
            .expect("a session holds its client until dropped")
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, ApiError> {
        let c = self.client();
        let st = c.prepare_cached(sql).await?;
        Ok(c.query_opt(&st, params).await?)
    }

    pub async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, ApiError> {
        let c = self.client();
        let st = c.prepare_cached(sql).await?;
        Ok(c.query_one(&st, params).await?)
    }

    /// Rows as they arrive, for a streamed page.
    pub async fn stream(
        &self,
        sql: &str,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
    ) -> Result<RowStream, ApiError> {
        let c = self.client();
        let st = c.prepare_cached(sql).await?;
        Ok(c.query_raw(
            &st,
            params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)),
        )
        .await?)
    }

    pub async fn commit(mut self) -> Result<(), ApiError> {
        self.client().batch_execute("COMMIT").await?;
        self.open = false;
        Ok(())
    }

    /// Ends the transaction, keeping the connection when that works.
    pub async fn rollback(&mut self) {
        if self.open && self.client().batch_execute("ROLLBACK").await.is_ok() {
            self.open = false;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.open {
            if let Some(c) = self.client.take() {
                // Out of the pool: dropping the client closes the
                // connection, and the server rolls the transaction back.
                drop(Object::take(c));
            }
        }
    }
}

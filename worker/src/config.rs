//! The worker's configuration: one TOML file, with environment overrides.
//!
//! ```toml
//! [source]
//! url = "postgres://user@127.0.0.1:5432/db"   # password via env TRIBUTARY_SOURCE_PASSWORD
//! slot = "tributary"
//! publication = "tributary"
//! [http]
//! listen = "127.0.0.1:9187"                     # /metrics and /healthz
//! [[destination]]
//! name = "audit"
//! kind = "queue"
//! tables = ["public.*"]
//! ```
//!
//! Overrides: `TRIBUTARY_SOURCE_URL`, `TRIBUTARY_SOURCE_SLOT`,
//! `TRIBUTARY_SOURCE_PUBLICATION`, `TRIBUTARY_SOURCE_PASSWORD`,
//! `TRIBUTARY_HTTP_LISTEN`. Unknown keys are errors, so a typo is never
//! silently ignored. `redacted()` prints it with secrets masked. The URL's
//! query may set `sslmode` and `sslrootcert` ([`crate::tls`]); a bad value
//! is refused here.

use crate::error::Error;
pub use crate::gateway::config::{AuthConfig, GatewayConfig};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: Source,
    #[serde(default)]
    pub http: Http,
    #[serde(default, rename = "destination")]
    pub destinations: Vec<Destination>,
    /// `run` also serves the gateway when this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayConfig>,
}

/// What `tributary-worker gateway` reads from the same file: `[source]`
/// is optional there (`gateway.database_url` names the hub), and the
/// destinations are not its business.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    source: Option<Source>,
    #[serde(default)]
    #[allow(dead_code)]
    http: Option<toml::Value>,
    gateway: Option<GatewayConfig>,
    #[serde(default, rename = "destination")]
    #[allow(dead_code)]
    destinations: Vec<toml::Value>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub url: String,
    #[serde(default = "default_name")]
    pub slot: String,
    #[serde(default = "default_name")]
    pub publication: String,
    /// Only from the environment (TRIBUTARY_SOURCE_PASSWORD), never the file.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: default_listen(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Queue,
    Sqlite,
    Nats,
    Mssql,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub name: String,
    pub kind: Kind,
    /// `schema.table` patterns; `*` matches any run of characters.
    #[serde(default = "all_tables")]
    pub tables: Vec<String>,
    /// The SQLite file, for kind = "sqlite".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How often a SQLite peer's outbox is read (kind = "sqlite"; 200 ms
    /// by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_interval_ms: Option<u64>,
    /// How many times in a row a SQLite peer may refuse a hub change before
    /// it is set aside as a dead letter (kind = "sqlite"; 5 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The NATS server(s), for kind = "nats": `nats://host:4222`, several
    /// comma-separated; `tls://` for TLS. For kind = "mssql", an ADO-style
    /// connection string (`server=tcp:host,1433;database=erp;user=…`), its
    /// password from env `TRIBUTARY_MSSQL_PASSWORD_<NAME>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The SQL Server schema the peer's tables are in (kind = "mssql";
    /// "dbo" by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The JetStream stream (kind = "nats"), created with the subjects
    /// `<subject_prefix>.>` when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The subjects' first token (kind = "nats"; "tributary" by default):
    /// a change goes to `<prefix>.<schema>.<table>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    /// NATS login (kind = "nats"); its password comes from env
    /// `TRIBUTARY_NATS_PASSWORD_<NAME>`. A token comes from
    /// `TRIBUTARY_NATS_TOKEN_<NAME>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A NATS `.creds` file (kind = "nats").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<String>,
    /// The CA that signed the NATS server's certificate (kind = "nats");
    /// TLS is then required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    /// Require TLS to NATS with the system's roots (kind = "nats").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_required: Option<bool>,
}

impl Kind {
    /// As written in the configuration (and the metrics' `kind` label).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Sqlite => "sqlite",
            Kind::Nats => "nats",
            Kind::Mssql => "mssql",
        }
    }
}

impl Destination {
    /// The settings of kind = "nats", and that no other kind has them.
    fn check_nats(&self) -> Result<(), String> {
        let name = &self.name;
        if self.kind == Kind::Mssql {
            if self.url.as_deref().is_none_or(str::is_empty) {
                return Err(format!(
                    "destination {name:?}: kind mssql needs url (server=tcp:host,1433;database=…;user=…)"
                ));
            }
            crate::mssql::conn::check_url(name, self.url.as_deref().unwrap_or_default())?;
            if self
                .schema
                .as_deref()
                .is_some_and(|s| s.is_empty() || s.len() > 128)
            {
                return Err(format!(
                    "destination {name:?}: schema must be 1 to 128 characters"
                ));
            }
        } else if self.schema.is_some() {
            return Err(format!(
                "destination {name:?}: schema is a setting of kind mssql only"
            ));
        }
        let nats_only = [
            ("url", self.url.is_some() && self.kind != Kind::Mssql),
            ("stream", self.stream.is_some()),
            ("subject_prefix", self.subject_prefix.is_some()),
            ("user", self.user.is_some()),
            ("creds_file", self.creds_file.is_some()),
            ("tls_ca", self.tls_ca.is_some()),
            ("tls_required", self.tls_required.is_some()),
        ];
        if self.kind != Kind::Nats {
            return match nats_only.iter().find(|(_, set)| *set) {
                Some((k, _)) => Err(format!(
                    "destination {name:?}: {k} is a setting of kind nats only"
                )),
                None => Ok(()),
            };
        }
        if self.url.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "destination {name:?}: kind nats needs url (nats://host:4222)"
            ));
        }
        // A stream name is one token: no spaces, '.', '*', '>', '/', '\\'.
        let stream_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 255
                && s.bytes().all(|b| {
                    b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\')
                })
        };
        match self.stream.as_deref() {
            Some(s) if stream_ok(s) => {}
            _ => {
                return Err(format!(
                    "destination {name:?}: kind nats needs stream, a name without spaces, '.', '*', '>', '/' or '\\'"
                ))
            }
        }
        // The prefix: one or more tokens of letters, digits, _ and -.
        if let Some(p) = &self.subject_prefix {
            let ok = p.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
            if !ok {
                return Err(format!(
                    "destination {name:?}: subject_prefix {p:?} must be tokens of letters, digits, _ and -, joined by '.'"
                ));
            }
        }
        Ok(())
    }

    /// [`Destination::max_attempts`], or its default.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
            .unwrap_or(crate::sink::poison::DEFAULT_MAX_ATTEMPTS)
    }
}

fn default_name() -> String {
    "tributary".into()
}
fn default_listen() -> String {
    "127.0.0.1:9187".into()
}
fn all_tables() -> Vec<String> {
    vec!["*.*".into()]
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Config {
    /// Reads the file, applies the environment, and validates.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text, env)
    }

    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let mut c: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        if let Some(v) = env("TRIBUTARY_SOURCE_URL") {
            c.source.url = v;
        }
        if let Some(v) = env("TRIBUTARY_SOURCE_SLOT") {
            c.source.slot = v;
        }
        if let Some(v) = env("TRIBUTARY_SOURCE_PUBLICATION") {
            c.source.publication = v;
        }
        if let Some(v) = env("TRIBUTARY_HTTP_LISTEN") {
            c.http.listen = v;
        }
        c.source.password = env("TRIBUTARY_SOURCE_PASSWORD");
        c.validate()?;
        if let Some(g) = &mut c.gateway {
            g.finish(Some(&c.source.url), c.source.password.as_deref(), &env)?;
        }
        Ok(c)
    }

    /// The `[gateway]` section alone, for `tributary-worker gateway`.
    pub fn load_gateway(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<GatewayConfig, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Config::parse_gateway(&text, env)
    }

    pub fn parse_gateway(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<GatewayConfig, Error> {
        let f: GatewayFile = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        let mut g = f
            .gateway
            .ok_or_else(|| Error::Config("the configuration has no [gateway] section".into()))?;
        let url = env("TRIBUTARY_SOURCE_URL").or(f.source.map(|s| s.url));
        let password = env("TRIBUTARY_SOURCE_PASSWORD");
        g.finish(url.as_deref(), password.as_deref(), &env)?;
        Ok(g)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.source.url.starts_with("postgres://")
            || self.source.url.starts_with("postgresql://"))
        {
            return bad(format!(
                "source.url must be a postgres:// URL, got {:?}",
                redact_url(&self.source.url)
            ));
        }
        // The URL's own checks (sslmode, sslrootcert, the port), so that
        // check-config reports them too.
        crate::source::ConnectOptions::from_url(&self.source.url, None)
            .map_err(|e| Error::Config(format!("source.url: {e}")))?;
        for (what, v) in [
            ("source.slot", &self.source.slot),
            ("source.publication", &self.source.publication),
        ] {
            if !valid_name(v) {
                return bad(format!(
                    "{what} {v:?} must be 1-63 characters of a-z, 0-9 and _"
                ));
            }
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            return bad(format!(
                "http.listen {:?} must be an address like 127.0.0.1:9187",
                self.http.listen
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.destinations {
            if d.name.is_empty()
                || !d
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return bad(format!(
                    "destination name {:?} must be letters, digits, _ and -",
                    d.name
                ));
            }
            if !seen.insert(&d.name) {
                return bad(format!("destination {:?} is defined twice", d.name));
            }
            if d.tables.is_empty() || d.tables.iter().any(|t| t.is_empty()) {
                return bad(format!(
                    "destination {:?}: tables must list at least one pattern",
                    d.name
                ));
            }
            if d.kind == Kind::Queue
                && (d.name.len() > 48
                    || !d
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
            {
                return bad(format!(
                    "destination {:?}: a queue's name is its table's (tributary.queue_<name>): use 1 to 48 characters of a-z, 0-9 and _",
                    d.name
                ));
            }
            if d.max_attempts.is_some_and(|n| !(1..=1000).contains(&n)) {
                return bad(format!(
                    "destination {:?}: max_attempts must be 1 to 1000",
                    d.name
                ));
            }
            match (d.kind, &d.path) {
                (Kind::Sqlite, None) => {
                    return bad(format!("destination {:?}: kind sqlite needs path", d.name))
                }
                (Kind::Queue | Kind::Nats, Some(_)) => {
                    return bad(format!(
                        "destination {:?}: kind {} takes no path",
                        d.name,
                        if d.kind == Kind::Queue {
                            "queue"
                        } else {
                            "nats"
                        }
                    ))
                }
                _ => {}
            }
            d.check_nats().map_err(Error::Config)?;
        }
        Ok(())
    }

    /// The configuration as TOML, with the password and any password in
    /// the URL masked.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        c.source.url = redact_url(&c.source.url);
        if c.source.password.is_some() {
            c.source.password = Some("<set by TRIBUTARY_SOURCE_PASSWORD>".into());
        }
        if let Some(g) = &mut c.gateway {
            g.redact();
        }
        toml::to_string(&c).unwrap_or_default()
    }
}

/// Masks the password in `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(p) => p,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const GOOD: &str = r#"
[source]
url = "postgres://app:s3cret@127.0.0.1:5432/hub"
[[destination]]
name = "audit"
kind = "queue"
tables = ["public.*"]
[[destination]]
name = "edge1"
kind = "sqlite"
path = "/var/lib/tributary/edge1.db"
"#;

    #[test]
    fn defaults_and_destinations_are_read() {
        let c = Config::parse(GOOD, no_env).unwrap();
        assert_eq!(
            (c.source.slot.as_str(), c.source.publication.as_str()),
            ("tributary", "tributary")
        );
        assert_eq!(c.http.listen, "127.0.0.1:9187");
        assert_eq!(c.destinations.len(), 2);
        assert_eq!(c.destinations[1].tables, vec!["*.*"]);
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let env = |k: &str| match k {
            "TRIBUTARY_SOURCE_SLOT" => Some("other_slot".to_string()),
            "TRIBUTARY_SOURCE_PASSWORD" => Some("from-env".to_string()),
            _ => None,
        };
        let c = Config::parse(GOOD, env).unwrap();
        assert_eq!(c.source.slot, "other_slot");
        assert_eq!(c.source.password.as_deref(), Some("from-env"));
    }

    #[test]
    fn secrets_are_redacted() {
        let env = |k: &str| (k == "TRIBUTARY_SOURCE_PASSWORD").then(|| "from-env".to_string());
        let out = Config::parse(GOOD, env).unwrap().redacted();
        assert!(
            !out.contains("s3cret") && !out.contains("from-env"),
            "{out}"
        );
        assert!(out.contains("app:****@127.0.0.1"), "{out}");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn the_gateway_section_takes_its_secrets_from_the_environment_and_checks_its_limits() {
        let secret = |k: &str| (k == "TRIBUTARY_GATEWAY_JWT_SECRET").then(|| "s".repeat(32));
        let text = format!("{GOOD}\n[gateway]\nlisten = \"127.0.0.1:8080\"\n");
        let c = Config::parse(&text, secret).unwrap();
        let g = c.gateway.as_ref().unwrap();
        assert_eq!(
            g.database_url.as_deref(),
            Some("postgres://app:s3cret@127.0.0.1:5432/hub")
        );
        assert_eq!(g.default_page_size(), 1000);
        assert!(!c.redacted().contains(&"s".repeat(32)));
        // `gateway` alone: no [source] needed when database_url is set.
        let alone = "[gateway]\nlisten = \"127.0.0.1:8080\"\ndatabase_url = \"postgres://gw@h/db\"\nmax_page_size = 50\n";
        assert_eq!(
            Config::parse_gateway(alone, secret)
                .unwrap()
                .default_page_size(),
            50
        );
        let cases = [
            (
                alone.to_string(),
                no_env as fn(&str) -> Option<String>,
                "a way to verify tokens",
            ),
            (
                format!("{alone}tls_cert = \"/c.pem\"\n"),
                secret,
                "go together",
            ),
            (
                format!("{alone}page_size = 51\n"),
                secret,
                "gateway.page_size must be 1 to 50",
            ),
            (
                format!("{alone}pool_size = 0\n"),
                secret,
                "gateway.pool_size",
            ),
            (
                alone.replace("127.0.0.1:8080", "nowhere"),
                secret,
                "gateway.listen",
            ),
            (
                "[gateway]\nlisten = \"127.0.0.1:1\"\n".to_string(),
                secret,
                "database_url is required",
            ),
            (
                "[http]\nlisten = \"x\"\n".to_string(),
                secret,
                "no [gateway] section",
            ),
        ];
        for (text, env, want) in cases {
            let e = Config::parse_gateway(&text, env).unwrap_err().to_string();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
        let short = |k: &str| (k == "TRIBUTARY_GATEWAY_JWT_SECRET").then(|| "short".to_string());
        assert!(Config::parse_gateway(alone, short)
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
    }

    #[test]
    fn a_nats_destination_needs_a_url_and_a_stream_of_one_token() {
        let nats = |extra: &str| {
            format!("{GOOD}[[destination]]\nname = \"bus\"\nkind = \"nats\"\n{extra}")
        };
        let ok = nats("url = \"nats://127.0.0.1:4222\"\nstream = \"TRIBUTARY\"\nsubject_prefix = \"acme.cdc\"\nuser = \"t\"\n");
        let c = Config::parse(&ok, no_env).unwrap();
        assert_eq!(c.destinations[2].kind, Kind::Nats);
        assert_eq!(
            c.destinations[2].subject_prefix.as_deref(),
            Some("acme.cdc")
        );
        let url = "url = \"nats://127.0.0.1:4222\"\n";
        let cases = [
            (nats("stream = \"S\"\n"), "kind nats needs url"),
            (nats(url), "kind nats needs stream"),
            (
                nats(&format!("{url}stream = \"a.b\"\n")),
                "needs stream, a name without",
            ),
            (
                nats(&format!("{url}stream = \"a b\"\n")),
                "needs stream, a name without",
            ),
            (
                nats(&format!("{url}stream = \"S\"\nsubject_prefix = \"a.*\"\n")),
                "subject_prefix",
            ),
            (
                nats(&format!("{url}stream = \"S\"\nsubject_prefix = \"a..b\"\n")),
                "subject_prefix",
            ),
            (
                nats(&format!("{url}stream = \"S\"\npath = \"/x\"\n")),
                "kind nats takes no path",
            ),
            (
                GOOD.replace("kind = \"queue\"", "kind = \"queue\"\nstream = \"S\""),
                "stream is a setting of kind nats only",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse(&text, no_env).unwrap_err().to_string();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
    }

    #[test]
    fn an_mssql_destination_needs_a_connection_string_and_takes_a_schema() {
        let mssql = |extra: &str| {
            format!("{GOOD}[[destination]]\nname = \"erp\"\nkind = \"mssql\"\n{extra}")
        };
        let c = Config::parse(
            &mssql("url = \"server=tcp:h,1433;database=erp;user=t\"\nschema = \"sync\"\n"),
            no_env,
        )
        .unwrap();
        assert_eq!(c.destinations[2].kind, Kind::Mssql);
        assert_eq!(c.destinations[2].schema.as_deref(), Some("sync"));
        let cases = [
            (mssql(""), "kind mssql needs url"),
            (
                mssql("url = \"server=x;user=t\"\nschema = \"\"\n"),
                "schema must be 1 to 128",
            ),
            (
                mssql("url = \"server=x;user=t;pwd=secret\"\n"),
                "holds a password; remove it and set env TRIBUTARY_MSSQL_PASSWORD_ERP",
            ),
            (mssql("url = \"server=x\"\n"), "names no user"),
            (
                mssql("url = \"server=x;user=t\"\nstream = \"S\"\n"),
                "stream is a setting of kind nats only",
            ),
            (
                GOOD.replace("kind = \"queue\"", "kind = \"queue\"\nschema = \"dbo\""),
                "schema is a setting of kind mssql only",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse(&text, no_env).unwrap_err().to_string();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        let cases = [
            (
                GOOD.replace("kind = \"queue\"", "kind = \"kafka\""),
                "unknown variant",
            ),
            (
                GOOD.replace("tables = [\"public.*\"]", "tabels = [\"public.*\"]"),
                "unknown field",
            ),
            (GOOD.replace("postgres://", "mysql://"), "postgres:// URL"),
            (
                GOOD.replace("/hub\"", "/hub?sslmode=verify-full\""),
                "sslmode=verify-full needs sslrootcert",
            ),
            (
                GOOD.replace("/hub\"", "/hub?sslmode=allow\""),
                "sslmode \"allow\" is not supported",
            ),
            (
                GOOD.replace("name = \"edge1\"", "name = \"audit\""),
                "defined twice",
            ),
            (
                GOOD.replace("path = \"/var/lib/tributary/edge1.db\"", ""),
                "needs path",
            ),
            (
                format!("{GOOD}\n[http]\nlisten = \"nowhere\""),
                "http.listen",
            ),
            (
                GOOD.replace("[source]", "[source]\nslot = \"Bad-Slot\""),
                "source.slot",
            ),
            (
                GOOD.replace("name = \"audit\"", "name = \"Audit-1\""),
                "a queue's name",
            ),
            (
                GOOD.replace(
                    "path = \"/var/lib/tributary/edge1.db\"",
                    "path = \"/var/lib/tributary/edge1.db\"\nmax_attempts = 0",
                ),
                "max_attempts must be 1 to 1000",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse(&text, no_env).unwrap_err().to_string();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
    }
}

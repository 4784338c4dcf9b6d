//! Parsing and validation: YAML text → [`Config`], or every problem found, each naming
//! the file, the line and the key path.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, Spanned};

use super::file::{self, FileConfig, ProviderKind};
use super::{
    AnthropicSettings, Balance, BreakerSettings, Config, EndpointSpec, HashSource, HealthCheck,
    Limits, Listener, ListenerTls, LoadAware, MockSettings, Model, PoolSpec, Priorities,
    PriorityClass, QueueSettings, RetryPolicy, Routing, Secret, ServerSettings, Strategy, Target,
    Timeouts,
};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem has no single place (e.g. a missing section).
    pub line: u64,
    pub column: u64,
    /// Dotted key path, e.g. `pools.openai.endpoints[0].api_key`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates a config file, taking `${VAR}` values from the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &file, &base_dir, &|name| std::env::var(name).ok())
}

/// Parses and validates config text. `env` supplies `${VAR}` values. File paths in the
/// config (certificates, CA files) are tried as written, then relative to `base_dir`
/// (the config file's folder).
pub fn parse(
    text: &str,
    file: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut path = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, FileConfig>(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            let path = spanless_path(&path);
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_owned(),
                line,
                column,
                path,
                message: parse_message(&e),
            }]));
        }
    };
    let mut v = Validator {
        file,
        base_dir,
        env,
        errors: Vec::new(),
    };
    let mut config = v.config(raw);
    if v.errors.is_empty() {
        config.text = text.to_owned();
        Ok(config)
    } else {
        // In file order; problems with no single place last.
        v.errors
            .sort_by_key(|e| if e.line == 0 { u64::MAX } else { e.line });
        Err(ConfigErrors(v.errors))
    }
}

/// The key path as the operator wrote it: without the `value` step that `Spanned`
/// wrappers add, and empty for the root.
fn spanless_path(path: &str) -> String {
    path.split('.')
        .filter(|step| *step != "value" && !step.is_empty())
        .map(|step| {
            step.strip_prefix("value[")
                .map_or_else(|| step.to_owned(), |rest| format!("[{rest}"))
        })
        .fold(String::new(), |mut out, step| {
            if !out.is_empty() && !step.starts_with('[') {
                out.push('.');
            }
            out.push_str(&step);
            out
        })
}

/// The parser's message without its own location prefix or source snippet: we print the
/// location ourselves, in the same form for every error.
fn parse_message(e: &serde_saphyr::Error) -> String {
    let mut options = serde_saphyr::RenderOptions::default();
    options.snippets = serde_saphyr::SnippetMode::Off;
    let rendered = e.render_with_options(options);
    let first = rendered.lines().next().unwrap_or_default().trim();
    // Drop a trailing " at line X, column Y" that would repeat what we print.
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_owned(),
        None => first.to_owned(),
    }
}

struct Validator<'a> {
    file: &'a str,
    base_dir: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, at: Location, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: at.line(),
            column: at.column(),
            path: path.into(),
            message: message.into(),
        });
    }

    fn config(&mut self, raw: FileConfig) -> Config {
        let server = self.server(raw.server);
        let listeners = self.listeners(raw.listeners);
        let limits = self.limits(raw.limits);
        let pool_index: HashMap<&str, usize> = raw
            .pools
            .value
            .keys()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i))
            .collect();
        let models = self.models(&raw.models, &pool_index);
        let pools = self.pools(&raw.pools);
        let routing = self.routing(&raw.routing);
        let auth = raw.auth.and_then(|a| self.auth(a));
        let quotas = raw.quotas.and_then(|q| self.quotas(q, &models));
        if let Err(e) = crate::store::build(&raw.state) {
            self.error(Location::UNKNOWN, "state.redis.url", e.to_string());
        }
        let cache = raw.cache.and_then(|c| self.cache(c, &models, &raw.state));
        let admin = raw.admin.map(|a| self.admin(a, &listeners));
        let log = self.log(raw.log);
        let priorities = raw
            .priorities
            .map(|p| self.priorities(p))
            .unwrap_or_default();
        Config {
            source: self.file.to_owned(),
            text: String::new(),
            server,
            listeners,
            limits,
            models,
            pools,
            routing,
            auth,
            quotas,
            state: raw.state,
            cache,
            admin,
            priorities,
            log,
        }
    }

    fn log(&mut self, l: file::LogSection) -> super::LogSettings {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&l.level) {
            self.error(
                Location::UNKNOWN,
                "log.level",
                format!("`{}`: {e}", l.level),
            );
        }
        let access = match l.access.trim() {
            "stderr" => super::LogDestination::Stderr,
            "stdout" => super::LogDestination::Stdout,
            "off" => super::LogDestination::Off,
            "" => {
                self.error(Location::UNKNOWN, "log.access", "must not be empty");
                super::LogDestination::Stderr
            }
            path => {
                let p = std::path::PathBuf::from(path);
                super::LogDestination::File(if p.is_relative() {
                    self.base_dir.join(p)
                } else {
                    p
                })
            }
        };
        super::LogSettings {
            level: l.level,
            format: l.format,
            access,
        }
    }

    fn priorities(&mut self, p: file::PrioritiesSection) -> Priorities {
        if p.classes.value.is_empty() {
            self.error(
                p.classes.referenced,
                "priorities.classes",
                "at least one class is needed",
            );
            return Priorities::default();
        }
        let mut classes = Vec::new();
        for (name, c) in &p.classes.value {
            if let Some(max) = &c.max_queue {
                self.at_least(max, 1, &format!("priorities.classes.{name}.max_queue"));
            }
            classes.push(PriorityClass {
                name: name.clone(),
                level: c.level,
                max_wait: c.max_wait,
                max_queue: c.max_queue.as_ref().map(|m| m.value),
                sheddable: c.sheddable,
            });
        }
        let index: HashMap<&str, usize> = p
            .classes
            .value
            .keys()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i))
            .collect();
        let class_named = |v: &mut Self, name: &Spanned<String>, path: String| {
            let found = index.get(name.value.as_str()).copied();
            if found.is_none() {
                v.error(
                    name.referenced,
                    path,
                    format!("no class named `{}` under `priorities.classes`", name.value),
                );
            }
            found
        };
        let default = match &p.default {
            Some(name) => class_named(self, name, "priorities.default".to_owned()).unwrap_or(0),
            None if classes.len() == 1 => 0,
            None => {
                self.error(
                    p.classes.referenced,
                    "priorities.default",
                    "name the class of callers no `keys` or `tiers` entry names",
                );
                0
            }
        };
        let rules = |v: &mut Self, raw: &BTreeMap<String, Spanned<String>>, what: &str| {
            raw.iter()
                .filter_map(|(who, class)| {
                    class_named(v, class, format!("priorities.{what}.{who}"))
                        .map(|i| (who.clone(), i))
                })
                .collect::<HashMap<_, _>>()
        };
        let keys = rules(self, &p.keys, "keys");
        let tiers = rules(self, &p.tiers, "tiers");
        Priorities {
            classes,
            default,
            keys,
            tiers,
        }
    }

    fn queue(
        &mut self,
        q: &Spanned<file::QueueSection>,
        p: &file::PoolSection,
        path: &str,
    ) -> Option<QueueSettings> {
        if p.provider == ProviderKind::Mock {
            self.error(
                q.referenced,
                path,
                "a `mock` pool answers locally and takes no queue",
            );
            return None;
        }
        let s = &q.value;
        if let Some(max) = &s.max_in_flight_per_endpoint {
            self.at_least(max, 1, &format!("{path}.max_in_flight_per_endpoint"));
        } else if !(s.load_signals && p.balance.strategy == Strategy::LoadAware) {
            self.error(
                q.referenced,
                path,
                "needs `max_in_flight_per_endpoint` (or `balance.strategy: load_aware` with \
                 `load_signals: true`) to tell when an endpoint is full",
            );
        }
        self.at_least(&s.max_length, 1, &format!("{path}.max_length"));
        Some(QueueSettings {
            max_in_flight_per_endpoint: s
                .max_in_flight_per_endpoint
                .as_ref()
                .map(|m| m.value.max(1)),
            load_signals: s.load_signals,
            max_length: s.max_length.value.max(1),
            max_wait: s.max_wait,
            retry_after: s.retry_after,
        })
    }

    fn admin(&mut self, a: file::AdminSection, listeners: &[Listener]) -> super::Admin {
        let address = a.address.value.clone();
        if address.parse::<std::net::SocketAddr>().is_err() {
            self.error(
                a.address.referenced,
                "admin.address",
                format!("`{address}` is not an IP:port address"),
            );
        } else if listeners.iter().any(|l| l.address == address) {
            self.error(
                a.address.referenced,
                "admin.address",
                "already a client listener: the admin listener must be apart",
            );
        }
        let token = a.token.as_ref().and_then(|t| {
            let value = self.expand_env(t, "admin.token")?;
            if value.len() < 16 {
                self.error(
                    t.referenced,
                    "admin.token",
                    "must be at least 16 characters",
                );
                return None;
            }
            Some(super::Secret::new(value))
        });
        if a.metrics.require_token && a.token.is_none() {
            self.error(
                a.address.referenced,
                "admin.metrics.require_token",
                "needs admin.token",
            );
        }
        let state_file = match &a.state_file {
            Some(f) => {
                let p = std::path::PathBuf::from(f);
                if p.is_relative() {
                    self.base_dir.join(p)
                } else {
                    p
                }
            }
            None => super::default_key_state_file(self.file),
        };
        super::Admin {
            address,
            token,
            per_key_metrics: a.metrics.per_key,
            metrics_require_token: a.metrics.require_token,
            state_file,
        }
    }

    fn cache(
        &mut self,
        c: crate::cache::CacheConfig,
        models: &[Model],
        state: &crate::store::StateConfig,
    ) -> Option<crate::cache::Policy> {
        for pattern in c.models.keys() {
            let matches = tollgate_plugin::ModelFilter::new(&[pattern])
                .is_ok_and(|f| models.iter().any(|m| f.allows(&m.name)));
            if !matches {
                self.error(
                    Location::UNKNOWN,
                    format!("cache.models.{pattern}"),
                    "matches no model under `models`",
                );
            }
        }
        if c.backend == crate::cache::config::BackendKind::Redis
            && let Err(e) = crate::store::RedisStore::new(&crate::store::RedisOptions {
                url: state.redis.url.clone(),
                key_prefix: String::new(),
                timeout: state.redis.timeout,
            })
        {
            self.error(Location::UNKNOWN, "state.redis.url", e.to_string());
        }
        match crate::cache::Policy::build(c) {
            Ok(policy) => Some(policy),
            Err(problems) => {
                for (path, message) in problems {
                    self.error(Location::UNKNOWN, format!("cache.{path}"), message);
                }
                None
            }
        }
    }

    fn auth(&mut self, mut a: tollgate_auth::AuthConfig) -> Option<super::Auth> {
        a.expand_secrets(|raw, path| self.expand_env(raw, path));
        match tollgate_auth::AuthPlugin::build(&a, self.base_dir) {
            Ok(plugin) => Some(super::Auth(std::sync::Arc::new(plugin))),
            Err(problems) => {
                for p in problems {
                    self.errors.push(ConfigError {
                        file: self.file.to_owned(),
                        line: p.line,
                        column: p.column,
                        path: p.path,
                        message: p.message,
                    });
                }
                None
            }
        }
    }

    fn quotas(
        &mut self,
        q: tollgate_limits::QuotasConfig,
        models: &[Model],
    ) -> Option<tollgate_limits::Quotas> {
        for (path, model) in q.referenced_models() {
            if !models.iter().any(|m| m.name == model) {
                self.error(
                    Location::UNKNOWN,
                    path,
                    format!("no model named `{model}` under `models`"),
                );
            }
        }
        match q.build() {
            Ok(quotas) => (!quotas.is_empty()).then_some(quotas),
            Err(problems) => {
                for p in problems {
                    self.error(Location::UNKNOWN, p.path, p.message);
                }
                None
            }
        }
    }

    fn routing(&mut self, r: &file::RoutingSection) -> Routing {
        self.at_least(&r.max_attempts, 1, "routing.max_attempts");
        Routing {
            max_attempts: r.max_attempts.value.max(1),
            deadline: r.deadline,
        }
    }

    /// Checks an integer setting's lower bound.
    fn at_least<T: PartialOrd + fmt::Display + Copy>(
        &mut self,
        v: &Spanned<T>,
        min: T,
        path: &str,
    ) {
        if v.value < min {
            self.error(v.referenced, path, format!("must be at least {min}"));
        }
    }

    /// Checks a fraction or ratio lies in `(0, max]`.
    fn fraction(&mut self, v: &Spanned<f64>, max: f64, path: &str) {
        if !(v.value > 0.0 && v.value <= max) {
            self.error(
                v.referenced,
                path,
                format!("must be above 0 and at most {max}"),
            );
        }
    }

    fn server(&mut self, s: file::ServerSection) -> ServerSettings {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = match s.threads {
            Some(t) if t.value == 0 => {
                self.error(t.referenced, "server.threads", "must be at least 1");
                1
            }
            Some(t) => t.value,
            None => cores,
        };
        ServerSettings {
            threads,
            work_stealing: s.work_stealing.unwrap_or(true),
            grace_period_seconds: s.grace_period_seconds.unwrap_or(30),
            graceful_shutdown_timeout_seconds: s.graceful_shutdown_timeout_seconds.unwrap_or(5),
            pid_file: s.pid_file.unwrap_or_else(|| "/tmp/tollgate.pid".to_owned()),
            upgrade_sock: s
                .upgrade_sock
                .unwrap_or_else(|| "/tmp/tollgate_upgrade.sock".to_owned()),
            error_log: s.error_log,
            upstream_keepalive_pool_size: s.upstream_keepalive_pool_size.unwrap_or(128),
        }
    }

    fn listeners(&mut self, raw: Spanned<Vec<file::ListenerSection>>) -> Vec<Listener> {
        if raw.value.is_empty() {
            self.error(
                raw.referenced,
                "listeners",
                "at least one listener is needed",
            );
        }
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (i, l) in raw.value.into_iter().enumerate() {
            let path = format!("listeners[{i}]");
            if l.address.value.parse::<SocketAddr>().is_err() {
                self.error(
                    l.address.referenced,
                    format!("{path}.address"),
                    format!(
                        "`{}` is not an IP:port address (e.g. 0.0.0.0:8080 or [::]:8080)",
                        l.address.value
                    ),
                );
            } else if let Some(first) = seen.insert(l.address.value.clone(), i) {
                self.error(
                    l.address.referenced,
                    format!("{path}.address"),
                    format!("same address as listeners[{first}]"),
                );
            }
            if l.http2 && l.tls.is_none() {
                // Cleartext h2 (h2c) would make Pingora wait for 24 bytes before it can
                // tell HTTP/1 from HTTP/2, stalling short HTTP/1.0 requests.
                self.error(
                    l.address.referenced,
                    format!("{path}.http2"),
                    "HTTP/2 is offered on TLS listeners only (through ALPN); add `tls` or drop `http2`",
                );
            }
            let tls = l.tls.map(|t| ListenerTls {
                cert_file: self.existing_file(&t.cert_file, &format!("{path}.tls.cert_file")),
                key_file: self.existing_file(&t.key_file, &format!("{path}.tls.key_file")),
            });
            out.push(Listener {
                address: l.address.value,
                tls,
                http2: l.http2,
            });
        }
        out
    }

    /// Resolves a file path (as given, else relative to the config's folder) and checks
    /// it can be read.
    fn existing_file(&mut self, f: &Spanned<String>, path: &str) -> String {
        let given = PathBuf::from(&f.value);
        let candidates = [given.clone(), self.base_dir.join(&given)];
        match candidates.iter().find(|p| std::fs::File::open(p).is_ok()) {
            Some(found) => found.display().to_string(),
            None => {
                self.error(
                    f.referenced,
                    path,
                    format!("cannot read file `{}`", f.value),
                );
                f.value.clone()
            }
        }
    }

    fn limits(&mut self, l: file::LimitsSection) -> Limits {
        if l.max_body_bytes.value < 1024 {
            self.error(
                l.max_body_bytes.referenced,
                "limits.max_body_bytes",
                "must be at least 1024",
            );
        }
        if l.max_header_bytes.value < 1024 {
            self.error(
                l.max_header_bytes.referenced,
                "limits.max_header_bytes",
                "must be at least 1024",
            );
        }
        Limits {
            max_body_bytes: l.max_body_bytes.value,
            body_read_timeout: l.body_read_timeout,
            header_read_timeout: l.header_read_timeout,
            idle_timeout: l.idle_timeout,
            max_header_bytes: l.max_header_bytes.value,
        }
    }

    fn models(
        &mut self,
        raw: &Spanned<BTreeMap<String, file::ModelSection>>,
        pools: &HashMap<&str, usize>,
    ) -> Vec<Model> {
        if raw.value.is_empty() {
            self.error(raw.referenced, "models", "at least one model is needed");
        }
        // Every public name and alias must name one model only.
        let mut names: HashMap<&str, String> = raw
            .value
            .keys()
            .map(|n| (n.as_str(), format!("model `{n}`")))
            .collect();
        let model_index: HashMap<&str, usize> = raw
            .value
            .keys()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut out = Vec::new();
        for (name, m) in &raw.value {
            let path = format!("models.{name}");
            let mut fallbacks = Vec::new();
            for (i, f) in m.fallbacks.iter().enumerate() {
                let fpath = format!("{path}.fallbacks[{i}]");
                match model_index.get(f.value.as_str()) {
                    None => self.error(
                        f.referenced,
                        fpath,
                        format!("no model named `{}` under `models`", f.value),
                    ),
                    Some(_) if f.value == *name => {
                        self.error(f.referenced, fpath, "a model cannot fall back to itself")
                    }
                    Some(j) if fallbacks.contains(j) => self.error(
                        f.referenced,
                        fpath,
                        format!("`{}` is listed twice", f.value),
                    ),
                    Some(&j) => fallbacks.push(j),
                }
            }
            if let Some(w) = &m.context_window {
                self.at_least(w, 1, &format!("{path}.context_window"));
            }
            if name.trim().is_empty() {
                self.error(raw.referenced, &path, "a model name cannot be empty");
            }
            for (i, alias) in m.aliases.iter().enumerate() {
                if let Some(owner) = names.get(alias.value.as_str()) {
                    self.error(
                        alias.referenced,
                        format!("{path}.aliases[{i}]"),
                        format!(
                            "`{}` is already the name or an alias of {owner}",
                            alias.value
                        ),
                    );
                } else {
                    names.insert(alias.value.as_str(), format!("model `{name}`"));
                }
            }
            if m.targets.value.is_empty() {
                self.error(
                    m.targets.referenced,
                    format!("{path}.targets"),
                    "at least one target pool is needed",
                );
            }
            let mut targets = Vec::new();
            for (i, t) in m.targets.value.iter().enumerate() {
                let tpath = format!("{path}.targets[{i}]");
                let Some(&pool) = pools.get(t.pool.value.as_str()) else {
                    self.error(
                        t.pool.referenced,
                        format!("{tpath}.pool"),
                        format!("no pool named `{}` under `pools`", t.pool.value),
                    );
                    continue;
                };
                if t.weight.value == 0 {
                    self.error(
                        t.weight.referenced,
                        format!("{tpath}.weight"),
                        "must be at least 1",
                    );
                }
                targets.push(Target {
                    pool,
                    upstream_model: t.model.clone().unwrap_or_else(|| name.clone()),
                    weight: t.weight.value,
                });
            }
            out.push(Model {
                name: name.clone(),
                aliases: m.aliases.iter().map(|a| a.value.clone()).collect(),
                owned_by: m.owned_by.clone().unwrap_or_else(|| "tollgate".to_owned()),
                targets,
                fallbacks,
                context_window: m.context_window.as_ref().map(|w| w.value),
            });
        }
        out
    }

    fn pools(&mut self, raw: &Spanned<BTreeMap<String, file::PoolSection>>) -> Vec<PoolSpec> {
        if raw.value.is_empty() {
            self.error(raw.referenced, "pools", "at least one pool is needed");
        }
        let mut out = Vec::new();
        for (name, p) in &raw.value {
            let path = format!("pools.{name}");
            let endpoints = match p.provider {
                ProviderKind::Mock => {
                    if !p.endpoints.value.is_empty() {
                        self.error(
                            p.endpoints.referenced,
                            format!("{path}.endpoints"),
                            "a `mock` pool answers locally and takes no endpoints",
                        );
                    }
                    Vec::new()
                }
                ProviderKind::Openai | ProviderKind::Anthropic => {
                    if p.endpoints.value.is_empty() {
                        self.error(
                            p.endpoints.referenced,
                            format!("{path}.endpoints"),
                            "at least one endpoint is needed",
                        );
                    }
                    if let Some(mock) = &p.mock {
                        self.error(
                            mock.referenced,
                            format!("{path}.mock"),
                            "only a `mock` pool takes mock settings",
                        );
                    }
                    p.endpoints
                        .value
                        .iter()
                        .enumerate()
                        .filter_map(|(i, e)| self.endpoint(e, &format!("{path}.endpoints[{i}]")))
                        .collect()
                }
            };
            let t = &p.timeouts;
            let ca_file = p
                .tls
                .ca_file
                .as_ref()
                .map(|f| PathBuf::from(self.existing_file(f, &format!("{path}.tls.ca_file"))));
            let mock = p.mock.as_ref().map(|m| &m.value);
            let anthropic = self.anthropic(p, &format!("{path}.anthropic"));
            let balance = self.balance(&p.balance, &format!("{path}.balance"));
            let health_check = self.health_check(&p.health_check, &format!("{path}.health_check"));
            let breaker = self.breaker(&p.breaker, &format!("{path}.breaker"));
            let queue = p
                .queue
                .as_ref()
                .and_then(|q| self.queue(q, p, &format!("{path}.queue")));
            self.at_least(&p.retry.attempts, 1, &format!("{path}.retry.attempts"));
            self.at_least(
                &p.max_response_bytes,
                1024,
                &format!("{path}.max_response_bytes"),
            );
            out.push(PoolSpec {
                name: name.clone(),
                provider: p.provider,
                endpoints,
                timeouts: Timeouts {
                    connect: t.connect,
                    first_byte: t.first_byte,
                    idle: t.idle,
                    total: t.total,
                },
                ca_file,
                dns_refresh: p.dns_refresh.max(std::time::Duration::from_secs(1)),
                mock: MockSettings {
                    chunk_delay: mock.map(|m| m.chunk_delay).unwrap_or_default(),
                    embedding_dims: mock.and_then(|m| m.embedding_dims).unwrap_or(16).max(1),
                },
                anthropic,
                balance,
                health_check,
                breaker,
                retry: RetryPolicy {
                    attempts: p.retry.attempts.value.max(1),
                    backoff: p.retry.backoff,
                    max_backoff: p.retry.max_backoff.max(p.retry.backoff),
                    max_retry_after: p.retry.max_retry_after,
                },
                max_response_bytes: p.max_response_bytes.value,
                queue,
            });
        }
        out
    }

    fn balance(&mut self, b: &file::BalanceSection, path: &str) -> Balance {
        let mut hash_on = Vec::new();
        for (i, source) in b.hash_on.iter().enumerate() {
            let text = source.value.trim();
            let parsed = match text.split_once(':') {
                Some(("header", name))
                    if !name.is_empty()
                        && http::HeaderName::from_bytes(name.as_bytes()).is_ok() =>
                {
                    Some(HashSource::Header(name.to_ascii_lowercase()))
                }
                Some(("body", "user")) => Some(HashSource::BodyUser),
                _ => None,
            };
            match parsed {
                Some(s) => hash_on.push(s),
                None => self.error(
                    source.referenced,
                    format!("{path}.hash_on[{i}]"),
                    format!("`{text}` is not `header:<name>` or `body:user`"),
                ),
            }
        }
        if b.max_waiting.value.is_nan() || b.max_waiting.value < 1.0 {
            self.error(
                b.max_waiting.referenced,
                format!("{path}.max_waiting"),
                "must be at least 1",
            );
        }
        self.fraction(&b.max_cache_usage, 1.0, &format!("{path}.max_cache_usage"));
        self.at_least(&b.prefix_bytes, 1, &format!("{path}.prefix_bytes"));
        if b.affinity_slack.value.is_nan() || b.affinity_slack.value < 0.0 {
            self.error(
                b.affinity_slack.referenced,
                format!("{path}.affinity_slack"),
                "must be 0 or more",
            );
        }
        if !b.metrics_path.starts_with('/') {
            self.error(
                Location::UNKNOWN,
                format!("{path}.metrics_path"),
                "must start with `/`",
            );
        }
        Balance {
            strategy: b.strategy,
            hash_on,
            load: LoadAware {
                metrics_path: b.metrics_path.clone(),
                scrape_interval: b.scrape_interval,
                stale_after: b.stale_after,
                max_waiting: b.max_waiting.value,
                max_cache_usage: b.max_cache_usage.value,
                prefix_bytes: b.prefix_bytes.value,
                affinity_slack: b.affinity_slack.value,
            },
        }
    }

    fn anthropic(&mut self, p: &file::PoolSection, path: &str) -> AnthropicSettings {
        let Some(a) = &p.anthropic else {
            return AnthropicSettings::default();
        };
        if p.provider != ProviderKind::Anthropic {
            self.error(
                a.referenced,
                path,
                "only a `provider: anthropic` pool takes anthropic settings",
            );
        }
        self.at_least(
            &a.value.default_max_tokens,
            1,
            &format!("{path}.default_max_tokens"),
        );
        AnthropicSettings {
            default_max_tokens: a.value.default_max_tokens.value.max(1),
        }
    }

    fn health_check(&mut self, h: &file::HealthCheckSection, path: &str) -> Option<HealthCheck> {
        if let Some(p) = &h.path
            && !p.value.starts_with('/')
        {
            self.error(p.referenced, format!("{path}.path"), "must start with `/`");
        }
        self.at_least(&h.unhealthy_after, 1, &format!("{path}.unhealthy_after"));
        self.at_least(&h.healthy_after, 1, &format!("{path}.healthy_after"));
        h.enabled.then(|| HealthCheck {
            path: h.path.as_ref().map(|p| p.value.clone()),
            interval: h.interval,
            timeout: h.timeout,
            unhealthy_after: h.unhealthy_after.value.max(1),
            healthy_after: h.healthy_after.value.max(1),
        })
    }

    fn breaker(&mut self, b: &file::BreakerSection, path: &str) -> Option<BreakerSettings> {
        self.at_least(
            &b.consecutive_failures,
            1,
            &format!("{path}.consecutive_failures"),
        );
        self.fraction(&b.failure_ratio, 1.0, &format!("{path}.failure_ratio"));
        self.at_least(&b.min_requests, 1, &format!("{path}.min_requests"));
        self.at_least(&b.half_open_probes, 1, &format!("{path}.half_open_probes"));
        b.enabled.then(|| BreakerSettings {
            consecutive_failures: b.consecutive_failures.value.max(1),
            failure_ratio: b.failure_ratio.value,
            window: b.window,
            min_requests: b.min_requests.value.max(1),
            open_for: b.open_for,
            max_open_for: b.max_open_for.max(b.open_for),
            half_open_probes: b.half_open_probes.value.max(1),
        })
    }

    fn endpoint(&mut self, e: &file::EndpointSection, path: &str) -> Option<EndpointSpec> {
        let url_text = self.expand_env(&e.url, &format!("{path}.url"))?;
        let url = match url::Url::parse(&url_text) {
            Ok(u) => u,
            Err(err) => {
                self.error(
                    e.url.referenced,
                    format!("{path}.url"),
                    format!("`{url_text}` is not a URL: {err}"),
                );
                return None;
            }
        };
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                self.error(
                    e.url.referenced,
                    format!("{path}.url"),
                    format!("scheme `{other}` is not supported; use http or https"),
                );
                return None;
            }
        };
        let Some(host) = url
            .host_str()
            .map(|h| h.trim_matches(['[', ']']).to_owned())
        else {
            self.error(
                e.url.referenced,
                format!("{path}.url"),
                "the URL has no host",
            );
            return None;
        };
        if url.query().is_some() || url.fragment().is_some() {
            self.error(
                e.url.referenced,
                format!("{path}.url"),
                "a base URL cannot carry a query or fragment",
            );
        }
        if let (Some(k), false) = (&e.api_key, e.api_keys.is_empty()) {
            self.error(
                k.referenced,
                format!("{path}.api_key"),
                "give either `api_key` or `api_keys`, not both",
            );
        }
        let mut api_keys = Vec::new();
        if let Some(k) = &e.api_key {
            api_keys.push(Secret::new(self.expand_env(k, &format!("{path}.api_key"))?));
        }
        for (i, k) in e.api_keys.iter().enumerate() {
            api_keys.push(Secret::new(
                self.expand_env(k, &format!("{path}.api_keys[{i}]"))?,
            ));
        }
        if e.weight.value == 0 {
            self.error(
                e.weight.referenced,
                format!("{path}.weight"),
                "must be at least 1",
            );
        }
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let name = match &e.name {
            Some(n) => n.value.clone(),
            None if host.contains(':') => format!("[{host}]:{port}"),
            None => format!("{host}:{port}"),
        };
        Some(EndpointSpec {
            url: url_text.clone(),
            name,
            tls,
            port,
            host,
            base_path: url.path().trim_end_matches('/').to_owned(),
            api_keys,
            weight: e.weight.value,
        })
    }

    /// Replaces each `${NAME}` with the environment variable's value; a missing variable
    /// is an error naming it.
    fn expand_env(&mut self, s: &Spanned<String>, path: &str) -> Option<String> {
        let mut out = String::with_capacity(s.value.len());
        let mut rest = s.value.as_str();
        let mut ok = true;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.error(s.referenced, path, "`${` without a closing `}`");
                return None;
            };
            let name = &after[..end];
            match (self.env)(name) {
                Some(v) if !v.is_empty() => out.push_str(&v),
                _ => {
                    self.error(
                        s.referenced,
                        path,
                        format!("environment variable `{name}` is not set"),
                    );
                    ok = false;
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        ok.then_some(out)
    }
}

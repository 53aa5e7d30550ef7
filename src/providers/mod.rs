//! The provider seam: one folder per telephony provider behind one trait, [`Source`], and one
//! list of them, [`Providers::from_settings`], the only place outside the folders that names
//! them. A provider brings its webhook routes (with their own state), what it runs beside
//! serving (JAS registration), the decoding of its journal rows into events that apply
//! themselves to the call table, its participant lookups and its recording requests. The rest
//! of the daemon — listeners, journal, processor, call table, recording workers — is
//! provider-neutral and reaches a provider only through this module.
//!
//! Why a trait object and not a closed enum: the processor holds a list of sources and a
//! journal row names its provider by string, so dispatch is a lookup in that list either way;
//! with a trait, adding a provider adds a folder and one line in `from_settings`, where an enum
//! would add an arm to every match here. Each provider's own types (its events, its client)
//! stay inside its folder as the concrete types behind `Box<dyn Event>` and `Arc<dyn Lookup>`.

pub mod jas;
pub mod reconcile;
pub mod telecmi;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

use crate::calls::{CallKey, CallTable, Changes, Details, ParticipantKey, Provider};
use crate::config::Settings;
use crate::http::Readiness;
use crate::journal::{Journal, NewJob, StoredEvent};
use crate::recordings::fetch::RecordingSource;

/// What every provider's routes share: the settings and the journal they append to.
#[derive(Clone)]
pub struct Ingest {
    pub settings: Arc<Settings>,
    pub journal: Journal,
}

/// One telephony provider, as the daemon sees it.
pub trait Source: Send + Sync {
    fn id(&self) -> Provider;

    /// Its webhook routes, carrying their own state; empty for a provider that only pulls.
    fn routes(&self, ingest: &Ingest) -> Router;

    /// Decodes one of its journal rows into the event to apply. Rows were decoded once when
    /// they were acknowledged, so an error means a row this version no longer understands.
    fn decode(&self, row: &StoredEvent) -> Result<Box<dyn Event>, String>;

    /// Who answers its participant lookups; `None` when it has none or they are off.
    fn lookup(&self) -> Option<Arc<dyn Lookup>> {
        None
    }

    /// What it runs beside serving (webhook registration, later a websocket reader).
    fn background(&self, _status: Readiness) -> Option<Box<dyn Background>> {
        None
    }

    /// How its recordings are requested; `None` when it has no recordings.
    fn recordings(&self) -> Option<Arc<dyn RecordingSource>> {
        None
    }

    /// Who compares the table with the provider's own picture (SPEC §8), journaling what it
    /// finds through `ingest`; `None` when it cannot (no such API, no credentials).
    fn reconciler(
        &self,
        _ingest: &Ingest,
        _table: Arc<CallTable>,
    ) -> Option<Arc<dyn reconcile::Reconcile>> {
        None
    }
}

/// A decoded provider event, applied by the processor in journal order.
pub trait Event: Send + Sync {
    /// What must be in memory before it is applied (a participant or call that may live only
    /// on disk), so that it updates that state instead of starting it afresh.
    fn wants(&self, table: &CallTable, wants: &mut Wants);

    /// Applies it to the call table; what else it asks for (lookups, download jobs) goes
    /// through `ctx`.
    fn apply(self: Box<Self>, ctx: &mut Apply<'_>);
}

/// Keys to bring into memory before a batch is applied.
#[derive(Default)]
pub struct Wants {
    pub participants: Vec<ParticipantKey>,
    pub calls: Vec<CallKey>,
}

/// One event's application: the table and what the processor offers, and what the event asked
/// for, which the processor carries out after it.
pub struct Apply<'a> {
    pub table: &'a CallTable,
    /// The journal row the event came from; a download job names it.
    pub journal_id: i64,
    pub received_at: DateTime<Utc>,
    /// What the table's changes are dated at (activity, a grace's deadline): `received_at`.
    pub now: DateTime<Utc>,
    /// Whether recordings are downloaded: new ones are then `pending` with a job.
    pub downloads: bool,
    /// Whether this provider's participants are looked up.
    pub lookups: bool,
    pub(crate) changes: Changes,
    pub(crate) wanted_lookups: Vec<(ParticipantKey, i64, Option<DateTime<Utc>>)>,
    pub(crate) jobs: Vec<NewJob>,
}

impl<'a> Apply<'a> {
    pub(crate) fn new(table: &'a CallTable, row: &StoredEvent, downloads: bool) -> Self {
        Self {
            table,
            journal_id: row.id,
            received_at: row.received_at,
            // The row's own time, not the clock: applying it again after a restart then gives
            // the same state (a grace's deadline, activity times) and the same events.
            now: row.received_at,
            downloads,
            lookups: false,
            changes: Changes::default(),
            wanted_lookups: vec![],
            jobs: vec![],
        }
    }

    /// Records what a table operation changed.
    pub fn note(&mut self, changes: Changes) {
        self.changes.merge(changes);
    }

    /// Asks for the participant's details as of the event at `seq` (only when `lookups`).
    pub fn look_up(&mut self, key: ParticipantKey, seq: i64, at: Option<DateTime<Utc>>) {
        self.wanted_lookups.push((key, seq, at));
    }

    /// Creates a download job with the state this event changed (only when `downloads`): the
    /// job names the call decided here, and a replay after a crash creates it again.
    pub fn queue_download(&mut self, job: NewJob) {
        self.jobs.push(job);
    }
}

/// A participant lookup against the provider's API.
pub trait Lookup: Send + Sync {
    /// The participant's details. `once` asks a single time, without the client's retries
    /// (a lookup given up before is retried by the processor's own rounds).
    fn details<'a>(
        &'a self,
        key: &'a ParticipantKey,
        once: bool,
    ) -> BoxFuture<'a, Result<Details, LookupError>>;

    /// How soon a lookup given up (the API unavailable through every retry) is asked again,
    /// and the longest pause it doubles up to.
    fn relookup_pauses(&self) -> (Duration, Duration);
}

/// Why a lookup has no details, in the terms the processor acts on.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Not visible to these credentials: the participant is not tracked.
    #[error("forbidden (403)")]
    Forbidden,
    /// Already gone: the participant is removed.
    #[error("not found (404)")]
    NotFound,
    /// The API stayed unavailable through the client's retries: asked again later.
    #[error("{0}")]
    Transient(String),
    /// Refused credentials or a rejected request: asking again would not help.
    #[error("{0}")]
    Failed(String),
}

/// Why a webhook body was refused (400), for every provider: the reply is all an integrator
/// sees, so a failure about one field names it, and the same failure has the same variant and
/// reads the same whichever provider's body it was. The route and the processor decode alike,
/// so the processor meets these only for a row this version no longer understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not in any format the provider sends; `accepts` names them (`JSON`, `JSON or form data`).
    #[error("body is not valid {accepts}: {error}")]
    Body {
        accepts: &'static str,
        error: String,
    },
    /// Valid JSON, but not the object every event is; says what it was (`an array`).
    #[error("body must be a JSON object, got {0}")]
    NotObject(&'static str),
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// Present but unusable; `expected` says what it must be (`an integer`, `"a" or "b"`).
    #[error("invalid field `{field}`: expected {expected}")]
    Invalid {
        field: &'static str,
        expected: &'static str,
    },
}

impl DecodeError {
    /// The offending field, if the error is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            DecodeError::Missing(field) | DecodeError::Invalid { field, .. } => Some(field),
            DecodeError::Body { .. } | DecodeError::NotObject(_) => None,
        }
    }

    /// A JSON body that is not an object, named by what it is.
    pub fn not_object(value: &serde_json::Value) -> DecodeError {
        use serde_json::Value;
        DecodeError::NotObject(match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        })
    }
}

/// A provider's work beside serving.
pub trait Background: Send + Sync {
    /// Runs until done or forever; an error is something an operator must fix and ends the
    /// daemon (exit 1). Upstream trouble is retried inside.
    fn run(&self) -> BoxFuture<'_, Result<(), String>>;
    /// At shutdown, after the listeners have drained.
    fn stop(&self) -> BoxFuture<'_, ()>;
}

/// The label values a provider's series take, registered at zero at start (`metrics.rs`).
/// Static, because the metrics registry is the process's, not one daemon's.
pub struct MetricNames {
    pub provider: Provider,
    /// `event` of `callhook_events_total`: its event names, `unknown` for the rest.
    pub events: &'static [&'static str],
    /// `field` of `callhook_event_field_warnings_total`: what an event may arrive without.
    pub repairable: &'static [&'static str],
    /// `api` of the upstream request metrics.
    pub apis: &'static [crate::outbound::Api],
    /// Whether it reconciles: its `callhook_reconcile_*` series are registered at zero.
    pub reconciles: bool,
}

/// Every provider's direction rule, for `CallTable::new` (the table decides a call's
/// direction on every change of its members, knowing no provider objects).
pub const DIRECTIONS: &[(Provider, crate::calls::DirectionRule)] = &[
    (Provider::Jas, jas::direction::direction),
    (Provider::Telecmi, telecmi::direction::direction),
];

/// Every provider's metric names, in the order of `Providers::from_settings`.
pub const METRIC_NAMES: &[MetricNames] = &[jas::METRIC_NAMES, telecmi::METRIC_NAMES];

/// Every provider callhook knows, built from the settings. Disabled ones are listed too: their
/// routes answer 404 and they start nothing, but journal rows they wrote while enabled still
/// apply. A row of a provider not in this list stops the processor's cursor (processor.rs).
pub struct Providers(Vec<Arc<dyn Source>>);

impl Providers {
    pub fn from_settings(settings: &Arc<Settings>) -> Result<Providers, String> {
        Ok(Providers(vec![
            Arc::new(jas::Jas::new(settings)?),
            Arc::new(telecmi::Telecmi::new(settings)?),
        ]))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Source>> {
        self.0.iter().find(|s| s.id().as_str() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Source>> {
        self.0.iter()
    }

    /// Every provider's webhook routes in one router.
    pub fn routes(&self, ingest: &Ingest) -> Router {
        self.0
            .iter()
            .fold(Router::new(), |router, s| router.merge(s.routes(ingest)))
    }
}

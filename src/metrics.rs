//! Prometheus metrics. The `metrics` facade has one process-wide recorder by design, so it is
//! installed once and its handle shared; every series is registered at zero at start-up so that
//! dashboards and alerts see it before the first event. Labels never carry numbers or ids.

use crate::calls::Provider;
use crate::providers::METRIC_NAMES;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::outbound;

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The shared handle; installs the recorder on first use.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("callhook_journal_batch_size".into()),
                        BATCH_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            register();
            handle
        })
        .clone()
}

const OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "ignored",
    "unauthorized",
    "forbidden",
    "bad_request",
    "not_found",
    "too_large",
    "timeout",
    "error",
];

/// A field of an accepted event was missing or unreadable and holds the receive time instead:
/// one `warn` line and one count. `field` is one of its provider's `MetricNames::repairable`, never request text.
pub fn field_warning(provider: Provider, field: &'static str, event: &str) {
    tracing::warn!(
        provider = provider.as_str(),
        event,
        field,
        "event field missing or unreadable; using the time it was received"
    );
    metrics::counter!("callhook_event_field_warnings_total", "provider" => provider.as_str(), "field" => field)
        .increment(1);
}

fn register() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "callhook_events_total",
        "Webhook requests by provider, event and outcome"
    );
    describe_gauge!("callhook_active_calls", "Calls in progress");
    describe_counter!(
        outbound::UPSTREAM_REQUESTS,
        "Requests to provider APIs by api and HTTP status"
    );
    describe_histogram!(
        outbound::UPSTREAM_REQUEST_SECONDS,
        Unit::Seconds,
        "Time of provider API requests"
    );
    describe_counter!(
        "callhook_recordings_total",
        "Recording downloads by outcome"
    );
    describe_gauge!(
        "callhook_recording_queue_depth",
        "Recording downloads not finished"
    );
    describe_histogram!(
        "callhook_recording_download_seconds",
        Unit::Seconds,
        "Time to download one recording"
    );
    describe_counter!(
        "callhook_recording_bytes_total",
        Unit::Bytes,
        "Bytes of recordings written"
    );
    describe_histogram!(
        "callhook_ack_seconds",
        Unit::Seconds,
        "Time from request to webhook reply"
    );
    describe_histogram!(
        "callhook_journal_batch_size",
        "Commands committed per journal transaction"
    );
    describe_histogram!(
        "callhook_journal_commit_seconds",
        Unit::Seconds,
        "Time of one journal transaction"
    );
    describe_histogram!(
        "callhook_journal_sync_seconds",
        Unit::Seconds,
        "Time of one fdatasync of the journal's WAL (covers every batch committed before it)"
    );
    describe_counter!("callhook_lookups_total", "Participant lookups by outcome");
    describe_counter!(
        "callhook_event_field_warnings_total",
        "Authentic events accepted with a field missing or unreadable, replaced by the receive time"
    );
    describe_gauge!(
        "callhook_lookups_waiting",
        "Participant lookups waiting: for one of the slots (slot), or to be asked again after the API was unavailable (retry); lookups in flight are not counted"
    );

    for names in METRIC_NAMES {
        let provider = names.provider.as_str();
        for event in names.events {
            for outcome in OUTCOMES {
                metrics::counter!("callhook_events_total", "provider" => provider, "event" => *event, "outcome" => *outcome).absolute(0);
            }
        }
        metrics::gauge!("callhook_active_calls", "provider" => provider).set(0.0);
    }
    for api in METRIC_NAMES.iter().flat_map(|names| names.apis) {
        let api = api.as_label();
        metrics::counter!(outbound::UPSTREAM_REQUESTS, "api" => api, "status" => "200").absolute(0);
        // A histogram handle, once created, is exported (with zero counts) before any sample.
        let _ = metrics::histogram!(outbound::UPSTREAM_REQUEST_SECONDS, "api" => api);
    }
    for name in [
        "callhook_ack_seconds",
        "callhook_journal_batch_size",
        "callhook_journal_commit_seconds",
        "callhook_journal_sync_seconds",
        "callhook_recording_download_seconds",
    ] {
        let _ = metrics::histogram!(name);
    }
    // `too_large`, `stalled`, `timeout`: attempts cut by a recordings limit (also counted as
    // `retried` or `failed`, as the job went on).
    for outcome in [
        "downloaded",
        "retried",
        "failed",
        "refused",
        "too_large",
        "stalled",
        "timeout",
    ] {
        metrics::counter!("callhook_recordings_total", "outcome" => outcome).absolute(0);
    }
    for outcome in ["ok", "forbidden", "gone", "failed"] {
        metrics::counter!("callhook_lookups_total", "outcome" => outcome).absolute(0);
    }
    for reason in ["slot", "retry"] {
        metrics::gauge!("callhook_lookups_waiting", "reason" => reason).set(0.0);
    }
    describe_counter!(
        "callhook_reconcile_runs_total",
        "Reconciliations with the provider's snapshot by outcome: ok, failed (tried again next interval), refused (403/404: off until restart)"
    );
    describe_counter!(
        "callhook_reconcile_changes_total",
        "What reconciliations changed: participants added, removed, calls ended"
    );
    for names in METRIC_NAMES.iter().filter(|names| names.reconciles) {
        let provider = names.provider.as_str();
        for outcome in crate::providers::reconcile::Outcome::COUNTED {
            metrics::counter!("callhook_reconcile_runs_total", "provider" => provider, "outcome" => outcome.as_str()).absolute(0);
        }
        for change in crate::providers::reconcile::Outcome::CHANGES {
            metrics::counter!("callhook_reconcile_changes_total", "provider" => provider, "change" => change).absolute(0);
        }
    }
    for names in METRIC_NAMES {
        for field in names.repairable {
            metrics::counter!("callhook_event_field_warnings_total", "provider" => names.provider.as_str(), "field" => *field).absolute(0);
        }
    }
    metrics::gauge!("callhook_recording_queue_depth").set(0.0);
    metrics::counter!("callhook_recording_bytes_total").absolute(0);
    describe_gauge!(
        "callhook_http_connections",
        "Open connections by listener (public, admin)"
    );
    describe_counter!(
        "callhook_http_connections_closed_total",
        "Connections the daemon closed: header_timeout, idle_timeout, or crowded (idle while the listener was at server.max_connections)"
    );
    for listener in ["public", "admin"] {
        metrics::gauge!("callhook_http_connections", "listener" => listener).set(0.0);
        for reason in ["header_timeout", "idle_timeout", "crowded"] {
            metrics::counter!("callhook_http_connections_closed_total", "listener" => listener, "reason" => reason).absolute(0);
        }
    }
}

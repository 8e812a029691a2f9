//! `readyd health`: a grpc.health.v1 check that exits 0 iff SERVING, so it
//! can serve as an exec probe or a container HEALTHCHECK; with `--report`,
//! the full health report for people.

use std::process::ExitCode;

use tokio_stream::StreamExt;

use serde_json::{Value, json};

use super::{Client, ClientArgs, ClientError, output};
use crate::api::pb::grpc_health_v1::HealthCheckRequest;
use crate::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use crate::api::pb::grpc_health_v1::health_client::HealthClient;
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::health_service_client::HealthServiceClient;

/// `readyd health`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  readyd health --service readiness\n  readyd health --watch --service dep.redis\n  readyd health --report"
)]
pub struct HealthArgs {
    /// The name to check: "" (readyd itself), liveness, startup,
    /// readiness, or dep.<check>.
    #[arg(long, default_value = "")]
    pub service: String,

    /// Keep printing every change until the stream ends.
    #[arg(long)]
    pub watch: bool,

    /// Print the health report (every check, its state and last error)
    /// instead; exit 0 unless the status is UNHEALTHY.
    #[arg(long, conflicts_with_all = ["service", "watch"])]
    pub report: bool,

    #[command(flatten)]
    pub client: ClientArgs,
}

fn name(status: ServingStatus) -> &'static str {
    match status {
        ServingStatus::Unknown => "UNKNOWN",
        ServingStatus::Serving => "SERVING",
        ServingStatus::NotServing => "NOT_SERVING",
        ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
    }
}

fn show(client: &Client, service: &str, status: ServingStatus) {
    client.print(
        serde_json::json!({ "service": service, "status": name(status) }),
        || format!("{}\n", name(status)),
    );
}

fn status_name(status: pb::HealthStatus) -> &'static str {
    match status {
        pb::HealthStatus::Unspecified => "UNSPECIFIED",
        pb::HealthStatus::Healthy => "HEALTHY",
        pb::HealthStatus::Degraded => "DEGRADED",
        pb::HealthStatus::Unhealthy => "UNHEALTHY",
    }
}

fn state_name(state: pb::CheckState) -> &'static str {
    match state {
        pb::CheckState::Unspecified => "UNSPECIFIED",
        pb::CheckState::Pending => "PENDING",
        pb::CheckState::Passing => "PASSING",
        pb::CheckState::Warning => "WARNING",
        pb::CheckState::Failing => "FAILING",
    }
}

fn millis(duration: Option<&prost_types::Duration>) -> Value {
    duration.map_or(Value::Null, |d| {
        json!(d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1e6)
    })
}

fn report_json(report: &pb::HealthReport) -> Value {
    json!({
        "status": status_name(report.status()),
        "readyd_version": report.readyd_version,
        "app_version": report.app_version,
        "environment": report.environment,
        "instance": report.instance,
        "timestamp": output::time(report.timestamp.as_ref()),
        "uptime_ms": millis(report.uptime.as_ref()),
        "maintenance_mode": report.maintenance_mode,
        "maintenance_message": report.maintenance_message,
        "stale_for_ms": millis(report.stale_for.as_ref()),
        "checks": report.checks.iter().map(|check| json!({
            "name": check.name,
            "target": check.target,
            "critical": check.critical,
            "state": state_name(check.state()),
            "latency_ms": millis(check.latency.as_ref()),
            "last_error": check.last_error,
            "consecutive_failures": check.consecutive_failures,
            "last_success": output::time(check.last_success.as_ref()),
            "last_checked": output::time(check.last_checked.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

fn report_table(report: &pb::HealthReport) -> String {
    let mut pairs = vec![
        ("status", status_name(report.status()).to_owned()),
        ("instance", report.instance.clone()),
        ("environment", report.environment.clone()),
        ("app version", report.app_version.clone()),
        ("readyd version", report.readyd_version.clone()),
        (
            "maintenance",
            if report.maintenance_mode {
                format!("on: {}", report.maintenance_message)
            } else {
                "off".to_owned()
            },
        ),
    ];
    if let Some(age) = &report.stale_for {
        let age = std::time::Duration::from_secs(u64::try_from(age.seconds).unwrap_or(0));
        pairs.push((
            "stale for",
            format!(
                "{} (answers say STALE: the database cannot be reached)",
                humantime::format_duration(age)
            ),
        ));
    }
    let mut out = output::fields(pairs);
    out.push('\n');
    let rows = report
        .checks
        .iter()
        .map(|check| {
            vec![
                check.name.clone(),
                state_name(check.state()).to_owned(),
                if check.critical { "yes" } else { "no" }.to_owned(),
                output::cell(
                    &millis(check.latency.as_ref())
                        .as_f64()
                        .map_or(Value::Null, |ms| Value::String(format!("{ms:.1}ms"))),
                ),
                check.consecutive_failures.to_string(),
                check.target.clone(),
                check.last_error.clone(),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &[
            "CHECK",
            "STATE",
            "CRITICAL",
            "LATENCY",
            "FAILURES",
            "TARGET",
            "LAST ERROR",
        ],
        rows,
    ));
    out
}

/// `readyd health --report`: exit 0 unless UNHEALTHY.
async fn run_report(args: HealthArgs) -> ExitCode {
    let result = async {
        let client = Client::connect(args.client).await?;
        let report = HealthServiceClient::new(client.channel.clone())
            .get_health(client.request(pb::GetHealthRequest {})?)
            .await?
            .into_inner();
        client.print(report_json(&report), || report_table(&report));
        Ok::<_, ClientError>(report.status())
    }
    .await;
    match result {
        Ok(pb::HealthStatus::Unhealthy) => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `readyd health`: exit 0 iff the (last) status is SERVING.
pub async fn run(args: HealthArgs) -> ExitCode {
    if args.report {
        return run_report(args).await;
    }
    let result = async {
        let client = Client::connect(args.client).await?;
        let mut health = HealthClient::new(client.channel.clone());
        let request = HealthCheckRequest {
            service: args.service.clone(),
        };
        if !args.watch {
            let status = health
                .check(client.request(request)?)
                .await?
                .into_inner()
                .status();
            show(&client, &args.service, status);
            return Ok::<_, ClientError>(status);
        }
        // A watch has no deadline: it runs until readyd ends the stream.
        let mut stream = HealthClient::new(client.channel.clone())
            .watch(tonic::Request::new(request))
            .await?
            .into_inner();
        let mut last = ServingStatus::Unknown;
        while let Some(message) = stream.next().await {
            last = message?.status();
            show(&client, &args.service, last);
        }
        Ok(last)
    }
    .await;
    match result {
        Ok(ServingStatus::Serving) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

//! Publish validation alone, per event type: `PublishRules::validate` on a realistic request of
//! each of the 17 ELMS event types, timed over many iterations. Built from the same source
//! against the current crate and against an older one (`bench/catalog/run.py` copies this file
//! into the older tree as an example), so it only uses what both have: `ServeArgs` →
//! `into_config` → `config.publish`.
//!
//! Output: one JSON object `{ "events": [{ "event", "ns_per_validate" }], "mean_ns" }`.

use std::time::Instant;

use clap::Parser;
use realtime_gateway::ServeArgs;
use serde_json::value::RawValue;

#[derive(Parser)]
struct Cli {
    /// Validations per event type (after as many again to warm up).
    #[arg(long, default_value_t = 20_000)]
    iterations: u32,
    #[command(flatten)]
    serve: ServeArgs,
}

/// A valid payload of each event type, as a backend would publish it.
const SAMPLES: [(&str, &str, &str); 17] = [
    (
        "script_submission",
        "script_submitted",
        r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","studentName":"Adaeze Okafor","courseCode":"CSC 201","courseName":"Data Structures","submittedAt":"2025-06-12T11:02:45Z","institutionId":3}"#,
    ),
    (
        "script_submission",
        "script_verified",
        r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","verifiedBy":55,"verifiedByName":"Mr. Bello","verifiedAt":"2025-06-12T11:05:10Z","remarks":"Cover page signed","institutionId":3}"#,
    ),
    (
        "script_submission",
        "script_collected",
        r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","collectedBy":"staff_9","collectedByName":"Mrs. Eze","collectedAt":"2025-06-12T12:00:00+01:00","institutionId":3}"#,
    ),
    (
        "script_submission",
        "script_graded",
        r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","courseCode":"CSC 201","gradedBy":61,"gradedByName":"Dr. Musa","score":67.5,"maxScore":100,"grade":"B","comment":null,"gradedAt":"2025-06-20T15:30:00Z","institutionId":3}"#,
    ),
    (
        "batch_update",
        "batch_sealed",
        r#"{"batchId":77,"batchNumber":"B-2025-014","examId":9,"scriptCount":48,"sealedBy":55,"sealedByName":"Mr. Bello","sealedAt":"2025-06-12T12:10:00Z","sealNumber":"SL-88213","institutionId":3}"#,
    ),
    (
        "batch_update",
        "batch_assigned",
        r#"{"batchId":77,"batchNumber":"B-2025-014","examId":9,"assignedTo":61,"assignedToName":"Dr. Musa","assignedBy":12,"assignedByName":"Exams Officer","assignedAt":"2025-06-13T08:00:00Z","dueAt":"2025-06-27","institutionId":3}"#,
    ),
    (
        "batch_update",
        "batch_created",
        r#"{"batchId":77,"batchNumber":"B-2025-014","examId":9,"examName":"First Semester Examinations","courseCode":"CSC 201","totalSlots":50,"createdBy":12,"createdByName":"Exams Officer","institutionId":3}"#,
    ),
    (
        "batch_update",
        "batch_status_changed",
        r#"{"batchId":77,"batchNumber":"B-2025-014","previousStatus":"sealed","status":"in_marking","changedBy":61,"changedByName":"Dr. Musa","changedAt":"2025-06-14T09:00:00Z","institutionId":3}"#,
    ),
    (
        "batch_update",
        "batch_stats_updated",
        r#"{"batchId":77,"totalSlots":50,"submittedCount":48,"verifiedCount":48,"collectedCount":48,"gradedCount":12,"updatedAt":"2025-06-20T15:30:01Z","institutionId":3}"#,
    ),
    (
        "exam_timetable",
        "timetable_published",
        r#"{"timetableId":"tt_2025_s1","examId":9,"examName":"First Semester Examinations","term":"2024/2025 First Semester","entryCount":132,"publishedBy":12,"publishedByName":"Exams Officer","publishedAt":"2025-05-02T10:00:00Z","institutionId":3}"#,
    ),
    (
        "exam_timetable",
        "timetable_updated",
        r#"{"timetableId":"tt_2025_s1","examId":9,"version":4,"changeSummary":"CSC 201 moved to 14 June, 09:00","courseCode":"CSC 201","updatedBy":12,"updatedByName":"Exams Officer","updatedAt":"2025-05-20T16:45:00Z","institutionId":3}"#,
    ),
    (
        "exam_timetable",
        "batches_created",
        r#"{"timetableId":"tt_2025_s1","examId":9,"examName":"First Semester Examinations","batchCount":264,"totalSlots":13200,"createdBy":12,"createdByName":"Exams Officer","createdAt":"2025-05-21T07:30:00Z","institutionId":3}"#,
    ),
    (
        "incident",
        "incident_reported",
        r#"{"incidentId":501,"examId":9,"category":"malpractice","severity":"high","description":"Phone found under answer booklet","courseCode":"CSC 201","venue":"Hall B","studentId":"U2021/CSC/118","reportedBy":55,"reportedByName":"Mr. Bello","reportedAt":"2025-06-12T10:15:00Z","institutionId":3}"#,
    ),
    (
        "incident",
        "incident_updated",
        r#"{"incidentId":501,"status":"under_investigation","severity":"high","updatedBy":12,"updatedByName":"Exams Officer","updatedAt":"2025-06-13T09:00:00Z","note":"Panel convened","institutionId":3}"#,
    ),
    (
        "incident",
        "incident_resolved",
        r#"{"incidentId":501,"resolution":"Script cancelled; student referred to disciplinary committee","resolvedBy":12,"resolvedByName":"Exams Officer","resolvedAt":"2025-06-30T14:00:00Z","institutionId":3}"#,
    ),
    (
        "notification",
        "new_notification",
        r#"{"notificationId":"ntf_01J0A","userId":61,"title":"Batch assigned","message":"Batch B-2025-014 (CSC 201) is ready for marking.","kind":"batch_assigned","link":"/marking/batches/77","createdAt":"2025-06-13T08:00:01Z","institutionId":3}"#,
    ),
    (
        "notification",
        "notification_read",
        r#"{"notificationId":"ntf_01J0A","userId":61,"readAt":"2025-06-13T08:12:30Z","institutionId":3}"#,
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let (config, _) = cli.serve.into_config()?;
    let rules = config.publish;
    let mut results = Vec::new();
    for (channel, event, payload) in SAMPLES {
        let body = format!(
            r#"{{"channel":"{channel}","event":"{event}","institutionId":3,"rooms":["batch:77"],"id":"bench-1","payload":{payload}}}"#
        );
        let raw = RawValue::from_string(body)?;
        if let Err(e) = rules.validate(&raw) {
            return Err(format!("{event}: the sample is refused: {e}").into());
        }
        for _ in 0..cli.iterations {
            std::hint::black_box(rules.validate(std::hint::black_box(&raw)).is_ok());
        }
        let start = Instant::now();
        for _ in 0..cli.iterations {
            std::hint::black_box(rules.validate(std::hint::black_box(&raw)).is_ok());
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(cli.iterations);
        results.push(serde_json::json!({ "event": event, "ns_per_validate": ns.round() }));
    }
    let mean = results
        .iter()
        .filter_map(|r| r["ns_per_validate"].as_f64())
        .sum::<f64>()
        / results.len() as f64;
    println!(
        "{}",
        serde_json::json!({ "events": results, "mean_ns": mean.round() })
    );
    Ok(())
}

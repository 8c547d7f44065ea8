//! `firebreak topics`: the topic contract (every topic, its key, its CloudEvents types, who
//! writes and who reads it, its partitions), printed for the people who run Kafka, and the
//! missing topics created on request.

use crate::{Result, cli::KafkaArgs, gate_cli::Output};

/// Prints the contract, with per-cluster topics named for `clusters`; creates the missing
/// topics first when `create` is set.
pub async fn run(clusters: &[String], output: Output, create: bool, kafka: &KafkaArgs) -> Result<()> {
    for c in clusters {
        if !firebreak_schema::names::is_dns1123_subdomain(c) {
            return Err(crate::Error::Usage(format!("--cluster `{c}` is not a DNS-1123 name")));
        }
    }
    if create {
        let cfg = kafka.config()?;
        let names: Vec<&str> = clusters.iter().map(String::as_str).collect();
        let topics = firebreak_schema::topics::for_clusters(names.iter().copied());
        let created = cfg.ensure_topics(&topics, kafka.topic_replication).await?;
        eprintln!("created {} of {} topics on {}: {}", created.len(), topics.len(), cfg.brokers, created.join(", "));
    }
    let rows: Vec<serde_json::Value> = firebreak_schema::topics::TOPICS
        .iter()
        .flat_map(|t| {
            let names: Vec<String> = if t.per_cluster && !clusters.is_empty() {
                clusters.iter().map(|c| t.name_for(c)).collect()
            } else {
                vec![t.name.to_owned()]
            };
            names.into_iter().map(move |name| {
                let mut v = serde_json::to_value(t).unwrap_or_default();
                v["name"] = serde_json::Value::String(name);
                v
            })
        })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default()),
        Output::Table => {
            let mut table = crate::gate_cli::table(&["TOPIC", "KEY", "TYPES", "WRITERS", "READERS", "PARTITIONS"]);
            for r in &rows {
                let types: Vec<&str> = r["types"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
                table.add_row(vec![
                    r["name"].as_str().unwrap_or_default().to_owned(),
                    r["key"].as_str().unwrap_or_default().to_owned(),
                    types.join(", "),
                    r["writers"].as_str().unwrap_or_default().to_owned(),
                    r["readers"].as_str().unwrap_or_default().to_owned(),
                    r["partitions"].to_string(),
                ]);
            }
            println!("{table}");
            println!(
                "Records are CloudEvents in Kafka's binary mode (ce_* headers, JSON body). Grant each principal \
                 Write only on the topics it writes (WRITERS) and Read on those it reads."
            );
        }
    }
    Ok(())
}

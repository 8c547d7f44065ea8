//! Custom plugins, node-problem-detector's contract: exit 0 ok, 1 problem, 2 unknown.

use std::time::Duration;

/// What a program's exit says, by node-problem-detector's custom plugin contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginStatus {
    /// Exit 0.
    Ok,
    /// Exit 1, with its first line of output.
    Problem(String),
    /// Exit 2 or another code, a timeout, or a program that would not start: with why.
    Unknown(String),
}

/// Runs a plugin (`program` split on spaces) for at most `timeout`.
pub async fn run_plugin(program: &str, timeout: Duration) -> PluginStatus {
    let mut argv = program.split_whitespace();
    let Some(bin) = argv.next() else { return PluginStatus::Unknown("no program".into()) };
    let out = match super::run_program(bin, argv, timeout).await {
        super::Ran::NotStarted(why) | super::Ran::Failed(why) => return PluginStatus::Unknown(why),
        super::Ran::Exited(out) => out,
    };
    let first = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().chars().take(512).collect();
    match out.status.code() {
        Some(0) => PluginStatus::Ok,
        Some(1) => PluginStatus::Problem(first),
        Some(code) => PluginStatus::Unknown(format!("exit {code}: {first}")),
        None => PluginStatus::Unknown("killed by a signal".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::script;

    #[tokio::test]
    async fn plugins_follow_the_npd_contract() {
        let t = Duration::from_secs(2);
        assert_eq!(run_plugin(&script("ok", "exit 0\n").1, t).await, PluginStatus::Ok);
        assert_eq!(
            run_plugin(&script("problem", "echo 'NTP is not synchronised'\necho more\nexit 1\n").1, t).await,
            PluginStatus::Problem("NTP is not synchronised".into())
        );
        assert!(
            matches!(run_plugin(&script("unknown", "echo maybe\nexit 2\n").1, t).await, PluginStatus::Unknown(w) if w == "exit 2: maybe")
        );
        assert!(
            matches!(run_plugin("sleep 5", Duration::from_millis(200)).await, PluginStatus::Unknown(w) if w.contains("killed"))
        );
        assert!(
            matches!(run_plugin("/no/such/plugin", t).await, PluginStatus::Unknown(w) if w.contains("cannot start"))
        );
    }
}

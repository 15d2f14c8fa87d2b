//! The throwaway PostgreSQL cluster starts, answers, and is gone after the drop.

use flashrack_testkit::pg::PgCluster;

#[test]
fn a_throwaway_cluster_answers_queries_and_stops_when_dropped() {
    if !flashrack_testkit::require_root(&["runuser", "psql"]) {
        return;
    }
    let cluster = PgCluster::start();
    let out = flashrack_testkit::run(
        "psql",
        &[
            &cluster.url(),
            "-tAc",
            "SELECT current_database() || ':' || 41 + 1",
        ],
    );
    assert_eq!(out.trim(), "flashrack:42");
    let port = cluster.port();
    drop(cluster);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on the cluster's port after the drop"
    );
}

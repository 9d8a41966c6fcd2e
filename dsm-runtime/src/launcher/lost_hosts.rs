//! Naming the hosts that went silent. When the runtime in the program gives up on a node
//! (`dsm: fatal: node N at ADDR: no answer ...`), it knows the node's address, not which
//! host that is or whether the host's other nodes are gone too. A host that dies with its
//! link down closes no connection, so its ssh or srun processes can outlive the job by
//! minutes; probing the nodes' ports at the end is what tells the user which host to
//! look at.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a node's port has to accept a connection at the end of a failed job: far
/// above a live host's round trip, and short next to the node timeout that ended it.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A host whose nodes no longer answer, with those nodes.
#[derive(Debug, PartialEq, Eq)]
pub struct LostHost {
    pub host: String,
    pub nodes: Vec<usize>,
}

/// A node to probe: its index, address and host.
pub type Probe<'a> = (usize, SocketAddr, &'a str);

/// Probes every node in parallel and returns the hosts of which some node does not
/// answer, in host order.
pub fn find(nodes: &[Probe<'_>]) -> Vec<LostHost> {
    let answered: Vec<bool> = std::thread::scope(|s| {
        let probes: Vec<_> = nodes
            .iter()
            .map(|(_, a, _)| s.spawn(move || TcpStream::connect_timeout(a, PROBE_TIMEOUT).is_ok()))
            .collect();
        probes
            .into_iter()
            .map(|p| p.join().unwrap_or(false))
            .collect()
    });
    group(&answered, nodes)
}

/// The hosts with a silent node, from the probes' answers.
fn group(answered: &[bool], nodes: &[Probe<'_>]) -> Vec<LostHost> {
    let mut lost: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (&ok, &(i, _, host)) in answered.iter().zip(nodes) {
        if !ok {
            lost.entry(host).or_default().push(i);
        }
    }
    lost.into_iter()
        .map(|(host, nodes)| LostHost {
            host: host.to_string(),
            nodes,
        })
        .collect()
}

/// One line for the user about a silent host.
pub fn describe(lost: &LostHost) -> String {
    let nodes: Vec<String> = lost.nodes.iter().map(usize::to_string).collect();
    format!(
        "dsmrun: host {}: its memory node(s) {} no longer answer: the host, or the network to \
         it, is down",
        lost.host,
        nodes.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_nodes_are_grouped_by_host() {
        let any: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let nodes: Vec<Probe<'_>> = ["b", "a", "b", "a"]
            .into_iter()
            .enumerate()
            .map(|(i, h)| (i + 2, any, h))
            .collect();
        let lost = group(&[true, false, true, false], &nodes);
        assert_eq!(
            lost,
            vec![LostHost {
                host: "a".into(),
                nodes: vec![3, 5]
            }]
        );
        assert!(describe(&lost[0]).starts_with("dsmrun: host a: its memory node(s) 3, 5 no"));
        assert!(group(&[true; 4], &nodes).is_empty());
    }

    #[test]
    fn a_closed_port_is_silent_and_a_listening_one_answers() {
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let lost = find(&[(0, live.local_addr().unwrap(), "h1"), (1, dead_addr, "h2")]);
        assert_eq!(
            lost,
            vec![LostHost {
                host: "h2".into(),
                nodes: vec![1]
            }]
        );
    }
}

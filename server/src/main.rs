//! The `concord` binary: `concord start` runs a node on an embedded data
//! directory; endpoints attach to it as their issues land.

mod cluster_cli;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use concord_server::Db;
use concord_server::config::{CommitSync, Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "concord",
    version,
    about = "Concord: CQL, strictly serializable transactions and fresh SQL analytics in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node until Ctrl-C or SIGTERM.
    Start(StartArgs),
    /// Starts a node and runs the clickstream demo over CQL: ingest, point
    /// reads, analytics, freshness.
    Demo(DemoArgs),
    /// A local cluster on loopback: `up`, `status`, `down`; `remove-node`.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Starts N nodes on loopback (node 1 bootstraps, the others join),
    /// each a detached `concord start` with its own ports, data directory,
    /// log and pid file; prints their addresses and returns.
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Node i listens on base + 10(i-1) + {0 CQL, 1 Postgres, 2 gRPC, 3 cluster}.
        #[arg(long, default_value_t = cluster_cli::BASE_PORT_DEFAULT)]
        base_port: u16,
        /// The cluster's directory (nodes' data, logs, pid files).
        #[arg(long, default_value = "concord-cluster")]
        data_dir: PathBuf,
    },
    /// Each node: up or down, primary token ranges, load, columnar lag.
    Status {
        #[arg(long, default_value = "concord-cluster")]
        data_dir: PathBuf,
    },
    /// Stops every node (SIGTERM, then waits) and reports.
    Down {
        #[arg(long, default_value = "concord-cluster")]
        data_dir: PathBuf,
    },
    /// Removes a node (alive or dead) from a cluster: asks the metadata
    /// leader through any member's cluster address.
    RemoveNode {
        /// The node to remove.
        #[arg(long)]
        node: u32,
        /// Any member's cluster address (`host:port`).
        #[arg(long)]
        seed: String,
    },
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// How many events to ingest.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Over how many users.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Keep the data here (default: a temporary directory, removed after).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    /// A TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the node keeps its data (default: ./concord-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How writes reach disk before they are acknowledged.
    #[arg(long, value_enum)]
    commit_sync: Option<CommitSyncArg>,
    /// A tracing filter such as `info` or `concord_server=debug`.
    #[arg(long)]
    log_filter: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
    /// `host:port` for the CQL endpoint (default 127.0.0.1:9042; port 0 picks a free one).
    #[arg(long)]
    cql_listen_address: Option<String>,
    /// `host:port` for the Postgres wire endpoint (default 127.0.0.1:5433; port 0 picks a free one).
    #[arg(long)]
    pg_listen_address: Option<String>,
    /// `host:port` for the gRPC endpoint, the Concord API and Arrow Flight
    /// SQL on one port (default 127.0.0.1:50051; port 0 picks a free one).
    #[arg(long, alias = "flight-listen-address")]
    grpc_listen_address: Option<String>,
    /// This node's id in its cluster (default 1).
    #[arg(long)]
    node_id: Option<u32>,
    /// `host:port` of the cluster metadata service (default: none, the node
    /// runs alone; port 0 picks a free one).
    #[arg(long)]
    cluster_listen_address: Option<String>,
    /// Join the cluster of the node whose cluster service is at `host:port`.
    #[arg(long)]
    join: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CommitSyncArg {
    Batch,
    Periodic,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start(args) => start(args),
        Command::Demo(args) => run_demo(args),
        Command::Cluster(ClusterCommand::Up {
            nodes,
            base_port,
            data_dir,
        }) => cluster_cli::up(nodes, base_port, &data_dir),
        Command::Cluster(ClusterCommand::Status { data_dir }) => cluster_cli::status(&data_dir),
        Command::Cluster(ClusterCommand::Down { data_dir }) => cluster_cli::down(&data_dir),
        Command::Cluster(ClusterCommand::RemoveNode { node, seed }) => {
            cluster_cli::remove_node(node, &seed)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("concord: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.events > 0 && args.users > 0,
        "--events and --users must be at least 1"
    );
    let temporary = args.data_dir.is_none();
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("concord-demo-{}", std::process::id()))
    });
    let config = Config {
        data_dir: data_dir.clone(),
        log_filter: "warn".to_owned(),
        ..Config::default()
    };
    init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("concord-oltp")
        .build()
        .context("start the tokio runtime")?;
    let started = std::time::Instant::now();
    let result = runtime.block_on(async {
        let db = std::sync::Arc::new(Db::open_with_config(&config).context("open the database")?);
        let cql = concord_server::cql::CqlServer::start(
            db.clone(),
            "127.0.0.1:0".parse().context("parse the demo address")?,
            concord_server::cql::Limits::default(),
        )
        .await
        .context("start the CQL endpoint")?;
        println!(
            "demo: node started on {} (data in {})",
            cql.local_address(),
            data_dir.display()
        );
        let options = demo::DemoOptions {
            events: args.events,
            users: args.users,
        };
        let outcome = demo::run(cql.local_address(), options).await;
        cql.stop();
        db.flush().context("flush")?;
        outcome.context("run the demo")
    });
    drop(runtime);
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    println!("demo: total {:.1} s", started.elapsed().as_secs_f64());
    result
}

fn load_config(args: &StartArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(data_dir) = &args.data_dir {
        config.data_dir = data_dir.clone();
    }
    if let Some(commit_sync) = args.commit_sync {
        config.commit_sync = match commit_sync {
            CommitSyncArg::Batch => CommitSync::Batch,
            CommitSyncArg::Periodic => CommitSync::Periodic,
        };
    }
    if let Some(log_filter) = &args.log_filter {
        config.log_filter = log_filter.clone();
    }
    if let Some(address) = &args.cql_listen_address {
        config.cql_listen_address = address.clone();
    }
    if let Some(address) = &args.pg_listen_address {
        config.pg_listen_address = address.clone();
    }
    if let Some(address) = &args.grpc_listen_address {
        config.grpc_listen_address = address.clone();
    }
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    if let Some(address) = &args.cluster_listen_address {
        config.cluster_listen_address = Some(address.clone());
    }
    if let Some(seed) = &args.join {
        config.join = Some(seed.clone());
    }
    if let Some(log_format) = args.log_format {
        config.log_format = match log_format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log_filter)
        .with_context(|| format!("parse log filter {:?}", config.log_filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn start(args: StartArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("concord-oltp")
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir =
        std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let mut db = Db::open_with_config(&config).context("open the database")?;
    // A cluster member joins (or resumes) its cluster and starts its Accord
    // runtime on the cluster's topology before it serves any client.
    let mut cluster = match &config.cluster_listen_address {
        Some(address) => Some(start_cluster(&config, address, &mut db).await?),
        None => None,
    };
    let db = std::sync::Arc::new(db);
    // A cluster member's DDL goes through the metadata log: the handle is in
    // the Db before any endpoint serves (DDL is refused until it is
    // attached, below).
    let cluster_meta = cluster.as_ref().map(|_| {
        let cluster_meta = concord_server::cluster_meta::ClusterMeta::new();
        db.set_cluster_meta(cluster_meta.clone());
        cluster_meta
    });
    // Install the handlers before announcing readiness, so a supervisor that
    // signals right after "ready" gets a clean stop.
    let shutdown = ShutdownSignals::install()?;
    let schema = db.schema();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %data_dir.display(),
        commit_sync = ?config.commit_sync,
        keyspaces = schema.keyspaces().count(),
        "concord started"
    );
    // The machine-readable lines a supervisor or test waits for.
    println!("concord {} started", env!("CARGO_PKG_VERSION"));
    println!("data dir: {}", data_dir.display());
    let cql_address: std::net::SocketAddr = config
        .cql_listen_address
        .parse()
        .context("parse cql_listen_address")?;
    let limits = concord_server::cql::Limits {
        frame_bytes_max: config.cql_frame_bytes_max,
        connections_max: config.cql_connections_max,
        in_flight_requests_max: config.cql_in_flight_requests_max,
        node_in_flight_requests_max: config.cql_node_in_flight_requests_max,
    };
    let cql = concord_server::cql::CqlServer::start(db.clone(), cql_address, limits)
        .await
        .with_context(|| format!("listen for CQL on {cql_address}"))?;
    tracing::info!(address = %cql.local_address(), "cql endpoint listening");
    println!("cql: listening on {}", cql.local_address());
    let pg_address: std::net::SocketAddr = config
        .pg_listen_address
        .parse()
        .context("parse pg_listen_address")?;
    let pg_limits = concord_server::pgwire::Limits {
        connections_max: config.pg_connections_max,
        query_bytes_max: config.pg_query_bytes_max,
    };
    let pg = concord_server::pgwire::PgServer::start(db.clone(), pg_address, pg_limits)
        .await
        .with_context(|| format!("listen for Postgres clients on {pg_address}"))?;
    tracing::info!(address = %pg.local_address(), "postgres endpoint listening");
    println!("postgres: listening on {}", pg.local_address());
    let grpc_address: std::net::SocketAddr = config
        .grpc_listen_address
        .parse()
        .context("parse grpc_listen_address")?;
    let grpc_limits = concord_server::grpc::Limits {
        message_bytes_max: config.grpc_message_bytes_max,
        concurrent_streams_max: config.grpc_concurrent_streams_max,
        change_stream_buffer: config.grpc_change_stream_buffer,
    };
    let grpc = concord_server::grpc::GrpcServer::start(db.clone(), grpc_address, grpc_limits)
        .await
        .with_context(|| format!("listen for gRPC on {grpc_address}"))?;
    tracing::info!(address = %grpc.local_address(), "grpc endpoint listening");
    println!("grpc: listening on {}", grpc.local_address());
    println!("flight sql: listening on {}", grpc.local_address());
    if let (Some(cluster_meta), Some(cluster)) = (&cluster_meta, &mut cluster) {
        // The member record learns its client endpoints (system.peers).
        let endpoints = [
            ("cql", cql.local_address()),
            ("pg", pg.local_address()),
            ("grpc", grpc.local_address()),
        ]
        .into_iter()
        .map(|(name, address)| (name.to_string(), address.to_string()))
        .collect();
        cluster
            .meta
            .set_endpoints(endpoints)
            .await
            .context("record this node's client endpoints")?;
        cluster_meta
            .attach(db.clone(), cluster.meta.clone())
            .await
            .map_err(anyhow::Error::msg)
            .context("apply the cluster's schema log")?;
        // Epoch transitions: serve sealed ranges, fetch gained ones (design/cluster.md).
        concord_server::transition::install_source_check(&db, cluster.runtime.clone());
        cluster.tasks.push(concord_server::transition::spawn(
            db.clone(),
            cluster.meta.clone(),
            cluster.runtime.clone(),
        ));
        // A node that joined a cluster holding data is up once its transition completes.
        let me = cluster.meta.id();
        let view = cluster
            .meta
            .wait_for_view(
                concord_server::transition::TRANSITION_TIMEOUT,
                "this node's transition to complete",
                |view| {
                    view.state.members.get(&me).is_none_or(|member| {
                        member.status != concord_cluster::meta::state::NodeStatus::Joining
                    }) || view.state.transition.is_none()
                },
            )
            .await?;
        println!(
            "cluster: node {me} {} at epoch {}",
            match view.state.members.get(&me).map(|member| member.status) {
                Some(concord_cluster::meta::state::NodeStatus::Up) => "up",
                _ => "not up (its transition was aborted)",
            },
            view.epoch()
        );
    }
    println!("ready");
    shutdown.wait().await?;
    tracing::info!("shutting down: flushing");
    if let Some(cluster_meta) = &cluster_meta {
        cluster_meta.stop().await;
    }
    if let Some(cluster) = cluster {
        cluster.shutdown().await?;
    }
    grpc.stop();
    cql.stop();
    pg.stop();
    db.flush().context("flush on shutdown")?;
    drop(db);
    tracing::info!("stopped cleanly");
    println!("stopped");
    Ok(())
}

/// A running cluster member: the metadata service, the transaction
/// transport (on the same port) and the tasks that feed the Accord runtime.
struct ClusterMember {
    meta: std::sync::Arc<concord_cluster::meta::MetaNode>,
    transport: concord_cluster::transport::Transport,
    runtime: std::sync::Arc<concord_cluster::runtime::Runtime>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClusterMember {
    async fn shutdown(self) -> anyhow::Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        self.transport.shutdown().await;
        self.meta
            .shutdown()
            .await
            .context("stop the cluster service")
    }
}

/// Starts the cluster metadata service on the node's engine, with the
/// transaction transport's peer service on the same port, then joins
/// `config.join` or (without it) bootstraps a cluster of this node, which on
/// a data directory that already holds a cluster resumes it. Prints the
/// view it reached: `cluster: node N at ADDR, epoch E, nodes up: 1,2`.
/// Then starts the database's Accord runtime on the view's topology, its
/// peers the members (design/cluster.md, "Accord over the network").
async fn start_cluster(
    config: &Config,
    address: &str,
    db: &mut Db,
) -> anyhow::Result<ClusterMember> {
    use concord_cluster::meta::{ExtraService, MetaConfig, MetaNode};
    use concord_cluster::transport::accord::{
        ACCORD_CODEC_VERSION, AccordWireStats, CLUSTER_ID_DEFAULT, TransportPeers, apply_view,
        epoch_floor, follow_views, spawn_delivery,
    };
    use concord_cluster::transport::{Limits, Transport, TransportConfig};
    let listen: std::net::SocketAddr = address.parse().context("parse cluster_listen_address")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen for the cluster on {address}"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("the bound address of {address}"))?;
    let limits = Limits::default();
    let node = concord_txn::timestamp::NodeId(config.node_id);
    let (transport, inbound, routes) = Transport::start_shared(TransportConfig {
        cluster_id: CLUSTER_ID_DEFAULT.to_owned(),
        node,
        listen: bound,
        codec_version: ACCORD_CODEC_VERSION,
        limits: limits.clone(),
    })
    .context("start the transaction transport")?;
    let extra = ExtraService {
        routes,
        keepalive_interval: limits.keepalive_interval,
        keepalive_timeout: limits.keepalive_timeout,
    };
    let meta = MetaNode::start_on(
        MetaConfig::new(config.node_id, bound),
        db.engine().clone(),
        listener,
        Some(extra),
    )
    .await
    .with_context(|| format!("start the cluster service on {address}"))?;
    let reply = match &config.join {
        Some(seed) => meta
            .join(seed, None)
            .await
            .with_context(|| format!("join the cluster through {seed}"))?,
        None => meta
            .bootstrap(None)
            .await
            .context("bootstrap the cluster")?,
    };
    let view = meta
        .wait_for_view(
            concord_cluster::meta::ADMIN_TIMEOUT_DEFAULT,
            "this node's join to apply here",
            |view| view.applied_index >= reply.log_index,
        )
        .await?;
    let up: Vec<String> = view.state.up_nodes().map(|node| node.to_string()).collect();
    tracing::info!(
        node = meta.id(),
        address = meta.address(),
        epoch = view.epoch(),
        "cluster member"
    );
    println!(
        "cluster: node {} at {}, epoch {}, nodes up: {}",
        meta.id(),
        meta.address(),
        view.epoch(),
        up.join(",")
    );
    let topology = view
        .topology
        .clone()
        .context("the cluster view has no topology although this node is up")?;
    apply_view(&view, &transport);
    transport.set_epoch(topology.epoch);
    let stats = std::sync::Arc::new(AccordWireStats::default());
    let runtime = db
        .start_cluster_accord(
            node,
            std::sync::Arc::new(topology),
            epoch_floor(&view.state),
            Box::new(TransportPeers::new(transport.clone(), stats.clone())),
        )
        .context("start the transaction runtime")?;
    let delivery = spawn_delivery(inbound, runtime.clone(), stats);
    let follower = follow_views(meta.subscribe(), transport.clone(), runtime.clone());
    Ok(ClusterMember {
        meta: std::sync::Arc::new(meta),
        transport,
        runtime,
        tasks: vec![delivery, follower],
    })
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the moment of creation.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("install SIGTERM handler")?,
        })
    }

    async fn wait(mut self) -> anyhow::Result<()> {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        Ok(())
    }
}

//! kvmrun: a KVM-based virtual machine monitor.

mod api;
mod bench;
mod boot_report;
mod cli;
mod config;
mod console;
mod dir_disk;
mod error;
mod events;
mod exec;
mod exec_args;
mod guest_shutdown;
mod host_check;
mod memory;
mod msi_routing;
mod pause;
mod pci_devices;
mod resources;
mod run_control;
mod seccomp;
mod seccomp_probe;
mod termination;
mod testhost;
mod vcpu;
mod vm;

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;

use crate::boot_report::BootTimeline;
use crate::cli::{BootReportFormat, Cli, Command, ConfigCommand, RunArgs};
use crate::error::Error;

fn main() {
    let start = Instant::now();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        // exec documents 125 for its own errors, malformed options included.
        Err(e) if e.use_stderr() && subcommand(&argv) == Some("exec".into()) => {
            let _ = e.print();
            std::process::exit(exec::EXIT_KVMRUN_ERROR);
        }
        Err(e) => e.exit(),
    };
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();

    let status = match cli.command {
        Command::Run(args) => run(args, start),
        Command::Bench(args) => bench::run(args),
        Command::Exec(_) => {
            std::process::exit(exec::main(&exec::words_after(&argv, &["exec"]), start))
        }
        Command::Config(ConfigCommand::Print(_)) => {
            match config::effective(&exec::words_after(&argv, &["config", "print"])) {
                Ok(e) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&e.config).unwrap_or_default()
                    );
                    Ok(0)
                }
                Err(e) => Err(Error::Exec(e.to_string())),
            }
        }
    };
    match status {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("kvmrun: error: {e}");
            std::process::exit(1);
        }
    }
}

/// The subcommand word of a command line (the first word that is not a global option).
fn subcommand(argv: &[std::ffi::OsString]) -> Option<String> {
    let mut words = argv.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(w) = words.next() {
        if w == "--log-level" {
            words.next();
        } else if !w.starts_with('-') {
            return Some(w.into_owned());
        }
    }
    None
}

fn run(args: RunArgs, start: Instant) -> Result<i32, Error> {
    let (kernel, initrd) = match &args.kernel {
        Some(k) => (k.clone(), args.initrd.clone()),
        None => {
            let (k, i) = resources::default_guest()?;
            (k, Some(args.initrd.clone().unwrap_or(i)))
        }
    };
    if args.testhost {
        let forwarded = testhost::forwarded_args(std::env::args_os(), &kernel, initrd.as_deref());
        return testhost::run_inside(forwarded);
    }

    let mut cmdline = args.cmdline.clone();
    if let Some(extra) = &args.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let cfg = vm::VmConfig {
        kernel,
        initrd,
        cmdline,
        cpus: args.cpus,
        mem_size: args.memory.0,
        console: args.console.clone(),
        disks: args.disks.clone(),
        nets: args.nets.clone(),
        allow_pvm: args.allow_pvm,
        pit: args.pit,
    };
    if args.seccomp == cli::SeccompMode::On {
        seccomp::enable()?;
    }
    let timeline = Arc::new(BootTimeline::new(start));
    let ctl = run_control::RunControl {
        api_socket: args.api_socket.clone(),
        shutdown_grace: Some(args.shutdown_grace.0),
        ..Default::default()
    };
    let outcome = vm::run_with(&cfg, timeline.clone(), ctl)?;
    if outcome.reason == "vcpu-error" {
        eprintln!(
            "kvmrun: the guest stopped on a vCPU error (see the log above); exit status {}",
            outcome.status
        );
    }
    if args.boot_report == Some(BootReportFormat::Json) {
        let report = timeline.report(outcome.status, &outcome.reason);
        eprintln!("{}", serde_json::to_string(&report).unwrap_or_default());
    }
    Ok(outcome.status)
}

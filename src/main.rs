//! kvmrun: a KVM-based virtual machine monitor.

mod bench;
mod boot_report;
mod cli;
mod console;
mod error;
mod host_check;
mod memory;
mod msi_routing;
mod pci_devices;
mod resources;
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
use crate::cli::{BootReportFormat, Cli, Command, RunArgs};
use crate::error::Error;

fn main() {
    let start = Instant::now();
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();

    let status = match cli.command {
        Command::Run(args) => run(args, start),
        Command::Bench(args) => bench::run(args),
    };
    match status {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("kvmrun: error: {e}");
            std::process::exit(1);
        }
    }
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
    };
    if args.seccomp == cli::SeccompMode::On {
        seccomp::enable()?;
    }
    let timeline = Arc::new(BootTimeline::new(start));
    let outcome = vm::run(&cfg, timeline.clone())?;
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

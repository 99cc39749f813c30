//! `tchcv info`

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let info = tchcv::info::collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    let or_unknown = |s: Option<String>| s.unwrap_or_else(|| "unknown".into());
    println!("tchcv            {}", info.tchcv_version);
    println!(
        "libtorch         {}",
        or_unknown(info.libtorch_version.clone())
    );
    println!(
        "libtorch path    {}",
        or_unknown(info.libtorch_path.as_ref().map(|p| p.display().to_string()))
    );
    println!(
        "CUDA linked      {}",
        if info.cuda_linked {
            "yes (libtorch_cuda kept)"
        } else {
            "no (CPU-only libtorch)"
        }
    );
    println!("CUDA available   {}", info.cuda_available);
    println!("cuDNN available  {}", info.cudnn_available);
    println!("CUDA devices     {}", info.cuda_device_count);
    for (i, name) in info.cuda_devices.iter().enumerate() {
        println!("  cuda:{i}         {name}");
    }
    println!(
        "threads          {} (of {} cores)",
        info.threads, info.cpu_cores
    );
    let backends: Vec<&str> = info.distributed_backends.iter().map(|b| b.name()).collect();
    println!(
        "distributed      {}",
        if info.distributed {
            format!("c10d compiled in, backends: {}", backends.join(", "))
        } else {
            "not compiled in".to_string()
        }
    );
    if !info.distributed_note.is_empty() {
        println!("  note           {}", info.distributed_note);
    }
    if !info.cuda_available {
        if let Some(err) = tchcv::info::cuda_probe_error() {
            let first = err.lines().next().unwrap_or_default();
            println!("CUDA probe       {first}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! The `tchcv` command line: one module per subcommand in `src/cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = artgc::cli::Cli::parse();
    artgc::telemetry::init(cli.log_format, &cli.log_level);
    std::process::ExitCode::from(artgc::cli::run(cli))
}

fn main() {
    eprintln!("train_gpt: not wired yet");
    std::process::exit(2);
}

//! The client commands, one file per group in the manner of mini-redis `cmd/`: each
//! takes its parsed arguments ([`crate::args`]), calls the HTTP API through
//! [`Client`](crate::client::Client) and prints the answer ([`crate::output`]).
//! Errors are [`ClientError`]s, whose kind decides the exit code.

mod channels;
mod check;
mod events;
mod pipeline;
mod reservations;
mod stock;

use crate::args::Command;
use crate::client::{ClientArgs, ClientError};

/// Runs one client command.
pub(crate) async fn run(command: Command) -> Result<(), ClientError> {
    match command {
        Command::Stock(args) => stock::show(args).await,
        Command::Adjust(args) => stock::adjust(args).await,
        Command::Reserve(args) => reservations::reserve(args).await,
        Command::Release(args) => reservations::release(args).await,
        Command::Fulfil(args) => reservations::fulfil(args).await,
        Command::Reservation(args) => reservations::show(args).await,
        Command::Events { command } => events::run(command).await,
        Command::Channels { command } => channels::channels(command).await,
        Command::SafetyStock { command } => channels::safety_stock(command).await,
        Command::Consumers { client } => pipeline::consumers(client).await,
        Command::Replay(args) => pipeline::replay(args).await,
        Command::DeadLetters(args) => pipeline::dead_letters(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Serve(_)
        | Command::Consume(_)
        | Command::Token { .. }
        | Command::Bench(_)
        | Command::Completions { .. }
        | Command::Demo(_)
        | Command::Man => Err(ClientError::Usage("not a client command".into())),
    }
}

/// The client flags of a client command; `None` for the others.
pub(crate) fn client_args(command: &Command) -> Option<&ClientArgs> {
    use crate::args::{ChannelsCommand, EventsCommand, SafetyStockCommand};
    Some(match command {
        Command::Stock(a) => &a.client,
        Command::Adjust(a) => &a.client,
        Command::Reserve(a) => &a.client,
        Command::Release(a) => &a.client,
        Command::Fulfil(a) => &a.client,
        Command::Reservation(a) => &a.client,
        Command::Replay(a) => &a.client,
        Command::DeadLetters(a) => &a.client,
        Command::Check(a) => &a.client,
        Command::Consumers { client } => client,
        Command::Channels { command } => match command {
            ChannelsCommand::List { client } => client,
            ChannelsCommand::Show(a) => &a.client,
            ChannelsCommand::Set(a) => &a.client,
        },
        Command::SafetyStock {
            command: SafetyStockCommand::Set(a),
        } => &a.client,
        Command::Events {
            command: EventsCommand::Tail(a),
        } => &a.client,
        Command::Serve(_)
        | Command::Consume(_)
        | Command::Token { .. }
        | Command::Bench(_)
        | Command::Completions { .. }
        | Command::Demo(_)
        | Command::Man => return None,
    })
}

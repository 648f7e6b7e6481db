# artgc controller image: a static musl binary on distroless/static, non-root.
#   docker build -t artgc:dev .
# The build stage compiles without the `demo` feature (no embedded test servers).
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev cmake make perl clang
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY core core
COPY src src
COPY testkit testkit
COPY examples examples
RUN cargo build --release --locked --no-default-features --bin artgc \
 && strip target/release/artgc

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/artgc /usr/local/bin/artgc
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/artgc"]
CMD ["controller"]

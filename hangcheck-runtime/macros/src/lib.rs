//! `#[hangcheck_runtime::main]`: `#[tokio::main]` with the runtime passed through
//! `hangcheck_runtime::instrument`. Re-exported by `hangcheck-runtime`; do not depend on
//! this crate directly.
//!
//! It takes `#[tokio::main]`'s arguments (`flavor = "multi_thread" | "current_thread"`,
//! `worker_threads = N`) so that adoption is a one-word change.

use proc_macro::TokenStream;
use quote::quote;
use syn::parse::Parser;
use syn::{ItemFn, LitInt, LitStr};

/// Marks the async `main` of a server as instrumented by hangcheck. See the crate docs of
/// `hangcheck-runtime`.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(args: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> syn::Result<proc_macro2::TokenStream> {
    let mut flavor = String::from("multi_thread");
    let mut worker_threads: Option<LitInt> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("flavor") {
            let lit: LitStr = meta.value()?.parse()?;
            match lit.value().as_str() {
                "multi_thread" | "current_thread" => flavor = lit.value(),
                other => {
                    return Err(meta
                        .error(format!("unknown flavor `{other}`: expected \"multi_thread\" or \"current_thread\"")))
                }
            }
            Ok(())
        } else if meta.path.is_ident("worker_threads") {
            worker_threads = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unsupported argument: expected `flavor` or `worker_threads`"))
        }
    });
    parser.parse2(args)?;

    let func: ItemFn = syn::parse2(item)?;
    if func.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(func.sig.fn_token, "#[hangcheck_runtime::main] needs an `async fn`"));
    }
    if flavor == "current_thread" && worker_threads.is_some() {
        return Err(syn::Error::new_spanned(
            worker_threads,
            "`worker_threads` only applies to the multi_thread flavor",
        ));
    }

    let attrs = &func.attrs;
    let vis = &func.vis;
    let mut sig = func.sig.clone();
    sig.asyncness = None;
    let body = &func.block;
    let builder = if flavor == "current_thread" {
        quote!(::hangcheck_runtime::__private::tokio::runtime::Builder::new_current_thread())
    } else {
        quote!(::hangcheck_runtime::__private::tokio::runtime::Builder::new_multi_thread())
    };
    let workers = worker_threads.map(|n| quote!(builder.worker_threads(#n);));

    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            let body = async #body;
            let mut builder = #builder;
            builder.enable_all();
            #workers
            ::hangcheck_runtime::instrument(&mut builder);
            #[allow(clippy::expect_used)]
            let runtime = builder.build().expect("Failed building the Runtime");
            ::hangcheck_runtime::__private::runtime_built(runtime.handle());
            runtime.block_on(body)
        }
    })
}

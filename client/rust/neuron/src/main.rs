use gradserve::{Client, Error, Graph};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // "": the GRADSERVE_TARGET environment variable, else localhost:50051.
    let client = Client::builder("").build()?;

    // The notebook's neuron: o = tanh(x1*w1 + x2*w2 + b).
    let g = Graph::new();
    let x1 = g.leaf(2.0).label("x1");
    let x2 = g.leaf(0.0).label("x2");
    let w1 = g.leaf(-3.0).label("w1");
    let w2 = g.leaf(1.0).label("w2");
    let b = g.leaf(6.881373587019543).label("b");
    let o = (&x1 * &w1 + &x2 * &w2 + &b).tanh().label("o");

    client.backward(&o).await?; // every node's value and gradient
    let (o, dx1, dw1) = (o.value(), x1.grad(), w1.grad());
    println!("o = {o:.4}, do/dx1 = {dx1:.4}, do/dw1 = {dw1:.4}");
    Ok(())
}

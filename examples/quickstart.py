import asyncio

from pydantic import BaseModel

from perdure import Engine, RetryPolicy, RunContext

engine = Engine()  # SQLite at ./.perdure/perdure.db; Engine("postgresql://…") to scale out


class Order(BaseModel):
    item: str
    quantity: int


class Receipt(BaseModel):
    item: str
    total: float


@engine.task(id="checkout", timeout=30, retry=RetryPolicy(max_attempts=3))
async def checkout(ctx: RunContext, order: Order) -> Receipt:
    ctx.log.info("charging for %d x %s", order.quantity, order.item)
    return Receipt(item=order.item, total=round(order.quantity * 9.99, 2))


async def main() -> None:
    async with engine:  # runs a worker in this process until the block ends
        handle = await checkout.trigger(Order(item="book", quantity=3))
        receipt = await handle.result()  # a Receipt, typed as one
        print(f"{handle.id} -> {receipt!r}")


asyncio.run(main())

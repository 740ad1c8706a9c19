"""WhatsApp, through Twilio: the first channel.

    webhook.py    POST /whatsapp: the signature checked, the form read, the message handed to the intake
    form.py       Twilio's webhook form into the channel-neutral InboundMessage (gateway.message)
    signature.py  the X-Twilio-Signature check, as one decorator, against PUBLIC_BASE_URL
    twiml.py      the reply as TwiML in the webhook's response
    notify.py     deferred outcomes sent by a worker through Twilio's REST API (gateway.deferred)
    simulate.py   `python -m gateway.whatsapp.simulate`: play Twilio without a phone
"""
